"""`soft-dist serve`: a trained model behind HTTP on Ray Serve (app), with request limits (uploads), its
options (options), the page people try it on (page.html), and the local command's life cycle (local)."""
