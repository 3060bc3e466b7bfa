"""A C CRC-32C for TensorBoard's event records.

Without TensorFlow, ``tensorboard`` checksums every record byte by byte in pure Python
(``tensorboard.compat.tensorflow_stub.pywrap_tensorflow.crc32c``): about half a second for one grid of
eight 512 px samples. google-crc32c computes the same value in C.
"""

from __future__ import annotations


def crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(bytes(data)))


def install() -> bool:
    """Make ``tensorboard``'s record writer use the C CRC (it looks ``crc32c`` up in its stub module at
    each call). False when tensorboard has no such stub (a TensorFlow install checksums in C already), or
    when google-crc32c could not load its C extension (1.5 needs ``pkg_resources``, gone from setuptools
    82) and is pure Python itself."""
    import warnings

    try:
        with warnings.catch_warnings():  # its pure-Python fallback warns; we then keep tensorboard's own CRC
            warnings.simplefilter("ignore", RuntimeWarning)
            import google_crc32c
        from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    except ImportError:
        return False
    if getattr(google_crc32c, "implementation", "c") != "c":
        return False
    if not hasattr(pywrap_tensorflow, "crc32c"):
        return False
    pywrap_tensorflow.crc32c = crc32c
    return True
