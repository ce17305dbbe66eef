"""Test images come from the same builder `preguard up --demo` uses (host files, `docker import`)."""

from preguard.images import build_image, glibc_root, musl_root, remove_images

__all__ = ["build_image", "glibc_root", "musl_root", "remove_images"]
