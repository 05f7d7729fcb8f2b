"""depthcurate's library: plain functions and small classes, no Prefect (see ARCHITECTURE.md)."""


def package_version() -> str:
    """The installed depthcurate version (dataset.json's generator, `depthcurate --version`)."""
    from importlib import metadata

    try:
        return metadata.version("depthcurate")
    except metadata.PackageNotFoundError:
        return "unknown"
