"""Object-storage URLs that carry credentials are refused before anything is written.

A URL such as ``s3://KEY:SECRET@bucket/run`` or a presigned ``https://...?X-Amz-Signature=...`` would be
copied into config.yaml, model.pt's metadata, model cards, logs, the shard cache and Ray's task
arguments. Credentials belong in the standard places instead: the AWS environment variables, a profile
(``AWS_PROFILE``) or an instance role. Pure stdlib, so the config module can use it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

# Query parameters of presigned URLs (AWS SigV2/SigV4, Google Cloud Storage, Azure SAS).
PRESIGN_PARAMS = frozenset({"x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature",
                            "awsaccesskeyid", "x-goog-signature", "x-goog-credential", "sig"})
WHERE_CREDENTIALS_GO = ("give credentials through AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and "
                        "AWS_SESSION_TOKEN), an AWS_PROFILE, or the machine's role, not in the URL")


def redacted(url: str) -> str:
    """``url`` without user info and query: what an error message may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def credentials_problem(text: str) -> str | None:
    """Why ``text`` must be refused (a URL with user info or a presigned query), or None. The reason shows
    the URL redacted, never the secret."""
    if "://" not in text:
        return None
    try:
        parts = urlsplit(text)
        has_user = parts.username is not None or parts.password is not None
    except ValueError:  # an unparseable URL: nothing we would pass on as credentials
        return None
    signed = any(key.lower() in PRESIGN_PARAMS for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    if not (has_user or signed):
        return None
    kind = "user name or key" if has_user else "presigned query"
    return f"the URL {redacted(text)} carries credentials ({kind}); {WHERE_CREDENTIALS_GO}"
