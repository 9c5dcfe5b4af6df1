"""The UI speaks English and Japanese: chosen from the browser's languages, switched with
lang-switch, and kept (localStorage ``cam.lang``) across a reload."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.waiting import eventually

from .conftest import Browsers, WebCluster
from .pages import TIMEOUT, ChatPage

pytestmark = pytest.mark.asyncio(loop_scope="module")

JAPANESE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
"""Hiragana, katakana or kanji."""


async def _login_label(page: ChatPage) -> str:
    button = page.tid("login-submit")
    await expect(button).to_be_visible(timeout=TIMEOUT)
    label = await button.evaluate("e => (e.tagName === 'INPUT' ? e.value : e.textContent).trim()")
    return str(label)


async def _label_becomes(page: ChatPage, check: re.Pattern[str] | str, what: str) -> str:
    """The login button's label once it matches ``check`` (a pattern, or not this text)."""

    async def label() -> str | None:
        text = await _login_label(page)
        ok = check.search(text) if isinstance(check, re.Pattern) else text != check
        return text if ok else None

    return await eventually(label, TIMEOUT / 1000, what, step=0.1)


async def test_lang_switch_to_japanese_and_a_reload_keeps_it(browsers: Browsers,
                                                             web_cluster: WebCluster) -> None:
    page = await browsers.open("en", web_cluster.url("camserver1"), locale="en-US")
    await page.goto()
    english = await _login_label(page)
    assert english and not JAPANESE.search(english), english
    await expect(page.tid("lang-switch")).to_have_value("en")

    await page.tid("lang-switch").select_option("ja")
    japanese = await _label_becomes(page, JAPANESE, "a Japanese login button")
    assert await page.page.evaluate("() => localStorage.getItem('cam.lang')") == "ja"
    await page.shot("login-ja")

    await page.page.reload()
    await expect(page.tid("lang-switch")).to_have_value("ja", timeout=TIMEOUT)
    assert await _login_label(page) == japanese

    await page.tid("lang-switch").select_option("en")
    assert await _label_becomes(page, japanese, "the English login button again") == english
    browsers.problems.check()


async def test_a_japanese_browser_gets_japanese(browsers: Browsers, web_cluster: WebCluster) -> None:
    page = await browsers.open("ja", web_cluster.url("camserver1"), locale="ja-JP")
    await page.goto()
    await _label_becomes(page, JAPANESE, "a Japanese login button")
    await expect(page.tid("lang-switch")).to_have_value("ja")
    browsers.problems.check()
