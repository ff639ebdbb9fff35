"""Shared test helpers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# Installed first on the child's PYTHONPATH. `sitecustomize` runs at interpreter start-up, before the child's code,
# and puts a finder at the front of `sys.meta_path`, so `ada_hf` cannot be imported whatever `sys.path` holds
# (the `''`/cwd entry that `python -c` prepends, an editable install, an inherited PYTHONPATH...).
# The `ada_hf.py` shadow module is a second line of defence in case a `sitecustomize` is not picked up.
_SITECUSTOMIZE = textwrap.dedent(
    '''
    import sys


    class _BlockAdaHf:
        """Refuse to import `ada_hf` (and its submodules): the child must only use the remote-code copies."""

        def find_spec(self, fullname, path=None, target=None):
            if fullname == "ada_hf" or fullname.startswith("ada_hf."):
                raise ImportError(f"{fullname} is blocked in this subprocess (tests/helpers.run_without_ada_hf)")
            return None


    sys.meta_path.insert(0, _BlockAdaHf())
    '''
)
_SHADOW_MODULE = 'raise ImportError("ada_hf is blocked in this subprocess (tests/helpers.run_without_ada_hf)")\n'


def run_without_ada_hf(
    code: str,
    cwd: str | os.PathLike,
    extra_env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run `python -c code` in a fresh interpreter (the same `sys.executable`) where `ada_hf` cannot be imported.

    Use it to check that a saved checkpoint/processor loads through remote code alone. The child runs with
    `HF_HUB_OFFLINE=1`, a fresh empty `HF_MODULES_CACHE` (unless `extra_env` sets one) and `cwd` as working
    directory; `extra_env` entries are added last. Output is captured as text; the return code is not checked.

    Args:
        code: Python source passed to `python -c` (it is dedented first).
        cwd: Working directory of the child.
        extra_env: Extra environment variables for the child.
        timeout: Seconds before `subprocess.TimeoutExpired` is raised.

    Returns:
        `subprocess.CompletedProcess` with `stdout` and `stderr` as `str`.
    """
    work = Path(tempfile.mkdtemp(prefix="no_ada_hf_"))
    try:
        blocker = work / "blocker"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        (blocker / "ada_hf.py").write_text(_SHADOW_MODULE)
        modules_cache = work / "hf_modules"
        modules_cache.mkdir()

        env = os.environ.copy()
        inherited = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(blocker) + (os.pathsep + inherited if inherited else "")
        env["HF_HUB_OFFLINE"] = "1"
        env["HF_MODULES_CACHE"] = str(modules_cache)
        if extra_env:
            env.update(extra_env)
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=str(cwd),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_torchrun(script_and_args: list[str], env: dict, nproc: int = 2, timeout: float = 120) -> str:
    """Run `torchrun --standalone --nproc_per_node nproc script args...` on the CPU and return its combined output.

    The launcher gets its own session, so a hang ends with its whole process group (its workers included) killed.
    Raises `AssertionError` with the output's tail on a timeout or a non-zero exit.
    """
    import signal

    env = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    process = subprocess.Popen(command + [str(a) for a in script_and_args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError("torchrun timed out:\n" + output[-4000:]) from None
    assert process.returncode == 0, output[-4000:]
    return output
