"""Google Cloud: the GPU catalog (catalog.py + gpus.toml, with sources), its rules (rules.py), capacity and quota errors (stockout.py), and the provider-schema checker (schema.py)."""
