"""A trained model outside training: rebuilding the network from model.pt (``network``), exporting it
to ONNX and TorchScript (``export``) with a model card (``model_card``), and scoring it on a shard
split (``evaluate``, ``confusion_files``)."""
