"""Where trials run: in this process, or as Ray tasks (``--workers`` / ``--ray``).

Ray does the scheduling; this module only submits one task per (config, rung)
and collects results in submission order. The data travel once, through the
object store.
"""
from __future__ import annotations

import socket

from ...errors import ConfigError
from .trial import evaluate


def _evaluate_task(data, config, seed, rung, C_start=None):
    import torch

    # one Ray CPU per task: keep torch's pool to that CPU so tasks do not oversubscribe
    torch.set_num_threads(1)
    return evaluate(config, seed, data, rung, C_start)


def _task(t):
    """(config, seed, rung, C_start) from a 3- or 4-tuple."""
    return (*t, None) if len(t) == 3 else tuple(t)


class LocalRunner:
    """Trials one after another in this process; bodies stay resident between rungs
    (``trial.FEATURES``)."""

    workers = 1
    kind = "in-process"
    caches = True

    def __init__(self, data):
        self.data = data

    def map(self, tasks, on_result=None, admit=None, predicted=None) -> list[dict | None]:
        """Results in task order; a task ``admit(i, 0)`` refuses, checked just before it
        would start, is not run (None)."""
        out = []
        for i, task in enumerate(tasks):
            if admit is not None and not admit(i, 0.0):
                out.append(None)
                continue
            config, seed, rung, C_start = _task(task)
            out.append(evaluate(config, seed, self.data, rung, C_start))
            if on_result:
                on_result(i, out[-1])
        return out

    def close(self) -> None:
        pass


class ThreadRunner:
    """Several trials at once in this process, for CUDA: each thread drives the GPU on its
    own stream while the others run their CPU parts (GPTQ rounding, Python), so the
    device is not idle between one trial's kernels. Admission is decided at submission,
    as for Ray. CUDA results are reproducible to round-off, not bit for bit."""

    kind = "threads"
    caches = True

    def __init__(self, data, workers: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        from .trial import TRIAL_BLAS_THREADS

        self.data = data
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="lbcnn-trial")
        # process-wide, once: per-trial limits would race between threads
        self._blas = threadpool_limits(limits=TRIAL_BLAS_THREADS, user_api="blas")

    def _run(self, config, seed, rung, C_start):
        import torch

        from ...binary import native

        stream = torch.cuda.Stream() if str(self.data.device).startswith("cuda") else None
        with native.thread_limit(1):
            if stream is None:
                return evaluate(config, seed, self.data, rung, C_start)
            with torch.cuda.stream(stream):
                out = evaluate(config, seed, self.data, rung, C_start)
            stream.synchronize()
            return out

    def map(self, tasks, on_result=None, admit=None, predicted=None) -> list[dict | None]:
        futures, offset = [], 0.0
        for i, task in enumerate(tasks):
            if admit is not None and not admit(i, offset):
                futures.append(None)
                continue
            futures.append(self._pool.submit(self._run, *_task(task)))
            if predicted is not None:
                offset += predicted[i] / self.workers
        out = []
        for i, f in enumerate(futures):
            out.append(None if f is None else f.result())
            if f is not None and on_result:
                on_result(i, out[-1])
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._blas.restore_original_limits()


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        return True
    except ImportError:
        return False


def _check_reachable(address: str) -> None:
    """Fail in seconds, not after Ray's long connection retries."""
    if address in ("auto", "local") or address.startswith("ray://"):
        host_port = address[len("ray://"):] if address.startswith("ray://") else None
    else:
        host_port = address
    if not host_port:
        return
    host, _, port = host_port.rpartition(":")
    try:
        port = int(port)
    except ValueError:
        raise ConfigError(f"Ray address must be HOST:PORT, ray://HOST:PORT or auto, got {address!r}") from None
    try:
        socket.create_connection((host or "127.0.0.1", port), timeout=3).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


class RayRunner:
    kind = "ray"
    caches = False  # a body's rungs may land on different workers

    def __init__(self, data, workers: int = 0, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError('Ray is not installed; pip install -e ".[ray]" or run without '
                              "--workers/--ray") from None
        self._ray = ray
        self._started = False
        if address:
            _check_reachable(address)
        if not ray.is_initialized():
            kw = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            try:
                if address:
                    ray.init(address=address, **kw)
                else:
                    ray.init(num_cpus=int(workers), **kw)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot start or join Ray ({'address ' + address if address else 'local'}): "
                                  f"{str(exc).splitlines()[0][:200]}") from None
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", workers or 1))
        self._data = ray.put(data)
        self._task = ray.remote(num_cpus=1, max_retries=2)(_evaluate_task)

    def map(self, tasks, on_result=None, admit=None, predicted=None) -> list[dict | None]:
        """Results in task order. Admission is decided at submission: task i would start
        about (the predicted seconds of the tasks admitted before it) / workers from now."""
        ray = self._ray
        refs, offset = [], 0.0
        for i, task in enumerate(tasks):
            if admit is not None and not admit(i, offset):
                refs.append(None)
                continue
            refs.append(self._task.remote(self._data, *_task(task)))
            if predicted is not None:
                offset += predicted[i] / max(1, self.workers)
        index = {ref: i for i, ref in enumerate(refs) if ref is not None}
        out: list = [None] * len(refs)
        pending = [r for r in refs if r is not None]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = index[ref]
                out[i] = ray.get(ref)
                if on_result:
                    on_result(i, out[i])
        return out

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
