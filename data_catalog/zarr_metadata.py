"""Zarr v3 metadata read as plain JSON, to decide whether a store is safe to decode before zarr touches it.

Both trust checks use this walk: the feature store's (pipeline/feature_store.py: our own format, a strict list) and
the one for Zarr inputs (data_catalog/readers.py: any plainly numeric array). Each keeps its own allowed names.
"""


def consolidated_nodes(document: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Every node in a zarr.json's consolidated metadata, nested groups' included, as (key inside the store, node)."""
    nodes = []
    for key, child in ((document.get("consolidated_metadata") or {}).get("metadata") or {}).items():
        if isinstance(child, dict):
            nodes.append((f"{prefix}{key}", child))
            nodes += consolidated_nodes(child, f"{prefix}{key}/")
    return nodes


def refused_parts(node: dict, data_types: set[str], codecs: set[str]) -> tuple[str | None, list[str]]:
    """(its data type if not in `data_types`, else None; its codecs not in `codecs`) of a v3 array node.

    Codecs nested in others (sharding's inner and index codecs) are checked too: they are decoded all the same.
    A node that is not an array (a group) has nothing to refuse.
    """
    if node.get("node_type") != "array":
        return None, []
    data_type = node.get("data_type")
    data_type_name = data_type.get("name") if isinstance(data_type, dict) else data_type
    refused_codecs, pending = [], list(node.get("codecs") or [])
    while pending:
        codec = pending.pop(0)
        codec_name = codec.get("name") if isinstance(codec, dict) else codec
        if codec_name not in codecs:
            refused_codecs.append(codec_name)
        configuration = (codec.get("configuration") or {}) if isinstance(codec, dict) else {}
        pending += list(configuration.get("codecs") or []) + list(configuration.get("index_codecs") or [])
    return (None if data_type_name in data_types else data_type_name), refused_codecs
