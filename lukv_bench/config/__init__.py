"""Suite files: YAML -> a validated :class:`~lukv_bench.config.suite.Suite`, every problem named with file, line and
key at once (:mod:`~lukv_bench.config.suite`), and the walk that checks an entry against declared keys
(:mod:`~lukv_bench.config.schema`)."""
