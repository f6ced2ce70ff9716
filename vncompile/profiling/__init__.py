"""``vncompile profile``: every (model, target, size) cell built and measured in processes of its own,
and the paper-style reports."""
