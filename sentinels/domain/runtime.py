"""Which runtime ran a local job, in words a user reads in `submit`, `status` and MLflow.

The embedded default runs jobs in their images (Podman, Docker) or, with the `process`
runtime, runs the command on the host and ignores the image: that must never look as if
the image ran, so the record carries a note saying so.
"""

RUNTIMES = ("auto", "podman", "docker", "process")
PROCESS = "process"


def note(runtime: str | None, image: str) -> str | None:
    """What a record says about its runtime, or None when the image is what runs."""
    if runtime != PROCESS:
        return None
    return (f"runtime process: the image {image} is not used; the command runs with this host's programs "
            "(set local.runtime: podman or docker to run the image)")


def image_label(runtime: str | None, image: str) -> str:
    """The image as status and MLflow should show it."""
    return f"{image} (not used: runtime process)" if runtime == PROCESS else image
