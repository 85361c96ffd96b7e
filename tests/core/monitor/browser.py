"""Headless Chromium for the dashboard tests, from Debian's ``chromium`` and
``chromium-driver`` packages driven by Selenium. Nothing is downloaded: the
driver path is given, so Selenium Manager never runs."""

from __future__ import annotations

import os
import shutil
from typing import Any

CHROMIUM = os.environ.get("POLYQ_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("POLYQ_CHROMEDRIVER", "/usr/bin/chromedriver")


def missing() -> str | None:
    """Why a browser test cannot run here, or ``None``."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.exists(path) or shutil.which(path)):
            return (
                f"{path} not found (apt-get install -y chromium chromium-driver; needs {package})"
            )
    return None


def chromium(width: int = 1360, height: int = 900) -> Any:
    """A headless Chromium WebDriver; quit() it when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
