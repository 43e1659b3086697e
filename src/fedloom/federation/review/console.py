"""The review prompt on a node's console (when it runs in a terminal).

Plans are shown one at a time, oldest first. An answer applies to the plan it was asked about;
if the admin decided that plan meanwhile with ``fx ... review``, the console says so and moves on.
"""

from __future__ import annotations

import queue
import threading
from typing import TextIO

from fedloom.federation.review.desk import Pending, ReviewDesk, ReviewError

APPROVE = {"y", "yes", "a", "approve"}
REJECT = {"n", "no", "r", "reject"}


class ConsolePrompter:
    def __init__(self, desk: ReviewDesk, stdin: TextIO, stdout: TextIO) -> None:
        self._desk = desk
        self._in = stdin
        self._out = stdout
        self._plans: queue.Queue[Pending] = queue.Queue()
        desk.on_pending.append(self._plans.put)

    def start(self) -> None:
        threading.Thread(target=self._run, name="fedloom-review-prompt", daemon=True).start()

    def _say(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _run(self) -> None:
        while True:
            pending = self._plans.get()
            if pending.future.done():  # decided with fx review, or withdrawn
                continue
            if not self._ask(pending):
                return  # the console closed: fx review still works

    def _ask(self, pending: Pending) -> bool:
        """Prompt until a valid answer; False when the console is gone."""
        plan = pending.plan
        self._say("\n" + plan.text() + "\n\n")
        while True:
            self._say(f"Approve experiment {plan.experiment} from '{plan.submitter}'? "
                      "[y]es / [n]o: ")
            answer = self._in.readline()
            if not answer:
                return False
            choice = answer.strip().lower()
            if choice in APPROVE or choice in REJECT:
                break
            self._say("please answer y or n\n")
        if pending.future.done():  # decided with fx review while the prompt waited
            self._say(f"experiment {plan.experiment} was already decided or withdrawn\n")
            return True
        reason = ""
        if choice in REJECT:
            self._say("Reason (optional, shown to the submitter): ")
            reason = self._in.readline().strip()
        try:
            self._desk.decide(plan.experiment, choice in APPROVE, reason, "console",
                              plan.digest)  # the plan shown, not one offered meanwhile
        except ReviewError:
            self._say(f"experiment {plan.experiment} was already decided or withdrawn\n")
        else:
            self._say(f"experiment {plan.experiment} "
                      f"{'approved' if choice in APPROVE else 'rejected'}\n")
        return True
