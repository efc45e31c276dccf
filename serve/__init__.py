"""The Ray Serve application (``serve.app:build_app``), deployed from ``serve/config.yaml``."""
