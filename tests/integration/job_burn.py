"""A job driver that burns CPU, then waits (run by `test_collector.py` as a Ray job)."""

import sys
import time

import ray

ray.init()
start = time.process_time()
while time.process_time() - start < float(sys.argv[1]):
    pass
print(f"burned {time.process_time():.3f}", flush=True)
time.sleep(float(sys.argv[2]))
