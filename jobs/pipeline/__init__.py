"""The batch pipeline: admission, intake, shards, dispatch, finalize, watchdog."""
