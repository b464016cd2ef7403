"""Starting the service's parts on one machine: Redis, the API, Celery workers, moto S3.

One harness for every caller: ``kvbatch up`` (``infra/stack.py``), the tests' fixtures and
the benchmarks all start processes and wait for them through these modules, so a part is
started one way everywhere.
"""
