"""Shared helpers for the data modules: fetching, reading and checksum verification of files."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

_GZIP_MAGIC = b"\x1f\x8b"
_DOWNLOAD_TIMEOUT_S = 60.0


def sha256_hex(data: bytes) -> str:
    """Hex sha256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | Path) -> bytes:
    """Contents of ``path``, gunzipped when the file starts with the gzip magic bytes.

    The gzip test looks at the content, not the suffix, so that a download's temporary
    ``.part`` file reads the same as the final file.
    """
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err


def check_sha256(data: bytes, expected_sha256: str | None, source: str) -> None:
    """Raise a ValueError naming ``source`` and both sums unless ``data`` has the expected sum.

    ``expected_sha256=None`` skips the check.
    """
    if expected_sha256 is None:
        return
    actual = sha256_hex(data)
    if actual != expected_sha256.lower():
        raise ValueError(
            f"{source}: sha256 mismatch: expected {expected_sha256}, got {actual}. The file is "
            "corrupt or not the expected version (verify=False skips the check)."
        )


def read_verified(path: str | Path, expected_sha256: str | None) -> bytes:
    """Contents of ``path`` (gunzipped, see :func:`read_bytes`), checked against a sha256 sum.

    The sum is taken over the un-gzipped bytes; ``expected_sha256=None`` skips the check.
    """
    data = read_bytes(path)
    check_sha256(data, expected_sha256, str(path))
    return data


def ensure_files(
    data_dir: str | Path,
    names: Sequence[str],
    base_url: str,
    download: bool,
    expected_sha256: Mapping[str, str],
) -> None:
    """Make sure every file in ``names`` exists in ``data_dir``, downloading missing ones.

    Missing files are fetched from ``base_url + name`` when ``download`` is true, verified
    against ``expected_sha256`` (names absent from it are not checked) and only then moved into
    place, so a failed or corrupt download never leaves a file that looks complete.

    Raises:
        FileNotFoundError: a file is missing and ``download`` is false, or its download failed.
        ValueError: a downloaded file does not match its checksum.
    """
    data_dir = Path(data_dir)
    missing = [name for name in names if not (data_dir / name).is_file()]
    if not missing:
        return
    expected_list = ", ".join(names)
    if not download:
        raise FileNotFoundError(
            f"{data_dir}: missing {', '.join(missing)} (expected files: {expected_list}); "
            "put them there or pass download=True"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in missing:
        url = base_url.rstrip("/") + "/" + name
        part = data_dir / (name + ".part")
        try:
            with (
                urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
                part.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
        except OSError as err:  # URLError, HTTPError and socket timeouts are all OSErrors
            part.unlink(missing_ok=True)
            raise FileNotFoundError(
                f"{data_dir}: missing {name} (expected files: {expected_list}) and downloading "
                f"{url} failed: {err}"
            ) from err
        try:
            check_sha256(read_bytes(part), expected_sha256.get(name), f"downloaded {url}")
        except ValueError:
            part.unlink(missing_ok=True)
            raise
        part.replace(data_dir / name)


def expected_sums(
    defaults: Mapping[str, str], verify: bool, overrides: Mapping[str, str] | None
) -> dict[str, str]:
    """The sha256 sums to check, by file name: ``defaults`` updated by ``overrides``.

    Empty when ``verify`` is false. An override for a file the dataset does not have is a
    ValueError, so a typo cannot silently turn a check off.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"checksums: unknown file name(s) {unknown}; accepted names: {sorted(defaults)}"
        )
    return {**defaults, **overrides} if verify else {}


def fraction_in(name: str, value: float, *, include_one: bool) -> float:
    """``value`` as a float if it lies in (0, 1) (``include_one=False``) or (0, 1]; otherwise
    a ValueError naming the argument and the accepted interval."""
    interval = "(0, 1]" if include_one else "(0, 1)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    if not (0 < value < 1 or (include_one and value == 1)):  # also rejects NaN
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)
