"""``vncompile ci``: the build matrix (models x devices x sizes), shards, bundles, index, summary, JUnit."""
