"""Data: the procedural world (``open4m.data.world``) and WebDataset shards (``open4m.data.shards``)."""
