"""Translations with Babel: catalogs are gettext ``.po`` files (English message ids; ``zh_CN``
holds the Chinese), read with Babel and compiled in memory at start-up (no build step, nothing
downloaded). zh-CN is the default language of the region; en is the other. Dates and numbers are
formatted by Babel for the page's locale."""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from babel import Locale
from babel.dates import format_datetime
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations

__all__ = ["LANGUAGES", "DEFAULT_LANGUAGE", "Translator", "pick_language"]

# Page language code -> Babel locale; the first is the default.
LANGUAGES: dict[str, str] = {"zh-CN": "zh_CN", "en": "en"}
DEFAULT_LANGUAGE = "zh-CN"
LOCALE_DIR = Path(__file__).parent / "locale"


def pick_language(value: str | None) -> str:
    """A supported page language (the default for anything else)."""
    return value if value in LANGUAGES else DEFAULT_LANGUAGE


class Translator:
    """Every language's translations, merged from the shared catalog and each app's own."""

    def __init__(self, locale_dirs: Iterable[Path] = ()) -> None:
        dirs = [LOCALE_DIR, *locale_dirs]
        self._translations: dict[str, NullTranslations] = {}
        for lang, babel_locale in LANGUAGES.items():
            merged = Catalog(locale=babel_locale, domain="messages")
            for folder in dirs:
                po = folder / babel_locale / "LC_MESSAGES" / "messages.po"
                if po.is_file():
                    with po.open("rb") as fh:
                        for message in read_po(fh, locale=babel_locale):
                            if message.id and message.string and not message.fuzzy:
                                merged.add(message.id, message.string)
            buffer = io.BytesIO()
            write_mo(buffer, merged)
            buffer.seek(0)
            self._translations[lang] = Translations(buffer, domain="messages")
        self.missing: dict[str, set[str]] = {}

    def translations(self, lang: str) -> NullTranslations:
        return self._translations[pick_language(lang)]

    def gettext(self, lang: str, message: str) -> str:
        return self.translations(lang).gettext(message)

    @staticmethod
    def datetime(lang: str, value: datetime | str | None, fmt: str = "medium") -> str:
        if not value or not isinstance(value, str | datetime):  # missing (None, Undefined)
            return ""
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return value
        else:
            when = value
        return format_datetime(when, fmt, locale=Locale.parse(LANGUAGES[pick_language(lang)]))

    @staticmethod
    def number(lang: str, value: float | int | None) -> str:
        if not isinstance(value, int | float):
            return ""
        return format_decimal(value, locale=LANGUAGES[pick_language(lang)])
