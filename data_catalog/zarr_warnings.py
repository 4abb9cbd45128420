"""One place to silence zarr's "not in the v3 spec" warnings for the extensions this project uses on purpose:
fixed-width unicode ids, numcodecs filters and consolidated metadata (all read back fine by zarr and xarray)."""

import contextlib
import warnings


@contextlib.contextmanager
def quiet_zarr_extension_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
        warnings.filterwarnings("ignore", message="The data type .* does not have a Zarr V3 specification")
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield
