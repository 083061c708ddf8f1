"""jepa-edge: JEPA agents per viewpoint, aligned by a linear map W, deployed to the edge."""


def package_version() -> str:
    """The installed jepa-edge version ("unknown" in a source tree that is not pip-installed)."""
    from importlib import metadata

    try:
        return metadata.version("jepa-edge")
    except metadata.PackageNotFoundError:
        return "unknown"
