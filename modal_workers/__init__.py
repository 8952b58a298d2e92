"""The Modal apps, deployed from this folder (`modal deploy modal_workers/tei_app.py`); not installed."""
