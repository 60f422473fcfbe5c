"""Other processes wait for the main one without a collective.

Under `accelerate launch` the main process alone evaluates and judges each finished node. A
collective barrier there would fail once that work outlasts the process group's timeout (a 7B
model's forgetting checks easily do), so the other processes instead poll a marker the main
process writes in the shared stage cache when it reaches the next node. If the main process
stops (a failed gate, an error), it writes why, and the others stop with that message.
"""
from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from alignlab.errors import AlignlabError


class MainProcessSignal:
    """Markers under `<cache>/.sync/<run token>/`; the token is broadcast from the main process."""

    def __init__(self, state, cache_dir: Path, poll_seconds: float = 0.2):
        from accelerate.utils import broadcast_object_list

        token = [uuid.uuid4().hex if state.is_main_process else None]
        broadcast_object_list(token)
        self.dir, self.main, self.poll = cache_dir / ".sync" / token[0], state.is_main_process, poll_seconds

    def reached(self, tag: str) -> None:
        """The main process marks `tag`; every other process waits until it has."""
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / tag).touch()
            return
        failed = self.dir / "failed"
        while not (self.dir / tag).exists():
            if failed.exists():
                raise AlignlabError(f"the main process stopped: {failed.read_text()}")
            time.sleep(self.poll)

    def finish(self, error: str | None) -> None:
        """Main process: tell waiting processes why it stopped, or clean up after success."""
        if not self.main:
            return
        if error is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "failed").write_text(error)
