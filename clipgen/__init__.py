"""video-generator core: models, catalog, planning, media, providers and stores. No Prefect here."""
