"""Operator commands that work on whole clusters and data directories, outside a node:

* ``backup.py``    ``paxoslog snapshot save``: download a consistent snapshot of a running
                   cluster (GET /api/v1/snapshot), verify it, keep it atomically;
* ``restore.py``   ``paxoslog snapshot restore``: the data directories of a new cluster
                   from such a file;
* ``recover.py``   ``paxoslog recover --force-new-cluster``: one surviving node's data as a
                   one-node cluster after a majority was lost;
* ``sqlexport.py`` ``paxoslog log export --sqlite``: a data directory as the design's
                   relational schema, read-only beside a live node.

Shared pieces: ``datadir.py`` (reading a data directory without its lock and replaying its
log into state machines), ``newdir.py`` (building a data directory beside the target and
moving it into place at once), ``progress.py`` (progress lines for long work).
"""
