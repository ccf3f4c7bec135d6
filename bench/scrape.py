"""A stand-in for Prometheus: scrapes metrics endpoints every ``interval`` seconds in a thread,
so a benchmark with metrics on also pays for being scraped."""

from __future__ import annotations

import threading
import urllib.request
from types import TracebackType


class Scraper:
    """``with Scraper([port, ...]):`` scrapes ``http://127.0.0.1:<port>/metrics`` meanwhile."""

    def __init__(self, ports: list[int], interval: float = 1.0) -> None:
        self._urls = [f"http://127.0.0.1:{port}/metrics" for port in ports]
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self.scrapes = 0
        self.bytes = 0

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for url in self._urls:
                with urllib.request.urlopen(url, timeout=5) as response:
                    self.bytes += len(response.read())
                self.scrapes += 1

    def start(self) -> Scraper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> Scraper:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
