"""The peer storage strategies the study compares lmdbio with: WebDataset and LitData.

``writing``: ImageFolder -> each peer's format (``write``); ``reading``: a Dataset over what
was written (``open_peer``); ``timing``: every writer's cost, measured the same way as
lmdbio's converter. Needs the ``peers`` extra (``pip install 'lmdbio[peers]'``).
"""

from lmdbio.study.conditions import PEER_FORMATS
from lmdbio.study.peers.writing import (MANIFEST, SHARD_SAMPLES, SHUFFLE_BUFFER, SUFFIXES,
                                        available, default_destination, listing_digest,
                                        read_manifest, require, sizes, write, write_litdata,
                                        write_webdataset)

__all__ = ["MANIFEST", "PEER_FORMATS", "SHARD_SAMPLES", "SHUFFLE_BUFFER", "SUFFIXES",
           "available", "default_destination", "listing_digest", "read_manifest", "require",
           "sizes", "write", "write_litdata", "write_webdataset"]
