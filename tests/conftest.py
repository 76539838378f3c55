"""Every test runs offline: huggingface_hub (and transformers) read only the local cache, never the Hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
