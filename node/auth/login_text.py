"""The words of the node's own sign-in pages (``/auth/authorize``: login form, patient picker,
errors) in English and Chinese, chosen by the request's ``ui_locales`` (OpenID Connect Core
§3.1.2.1: the end-user's preferred languages, space-separated BCP 47 tags). The portal passes its
session's language; a third-party app may pass its own; without one the page is English.

Kept here, not in the portal's Babel catalogs: node.auth sits below the pages and must not import
servicekit.web (the layering contract of docs/architecture.md)."""

from __future__ import annotations

__all__ = ["LOCALES", "pick_locale", "text"]

_EN = {
    "sign_in": "Sign in",
    "asks_for": "{app} asks for:",
    "username": "Username",
    "password": "Password",
    "submit": "Sign in and allow",
    "cannot": "Cannot sign in",
    "choose": "Choose a patient",
    "find_by_name": "Find by name",
    "find": "Find",
    "none": "none",
    "open": "Open this patient's record",
    "expired": "Your sign-in has expired; please sign in again.",
    "inactive": "Your account is not active.",
    "no_patient": "No such patient.",
    "locked": "Too many failed sign-ins for this account; try again in {seconds} s.",
    "invalid": "Invalid username or password.",
}
_ZH = {
    "sign_in": "登录",
    "asks_for": "{app} 请求以下权限：",
    "username": "用户名",
    "password": "密码",
    "submit": "登录并授权",
    "cannot": "无法登录",
    "choose": "选择患者",
    "find_by_name": "按姓名查找",
    "find": "查找",
    "none": "无",
    "open": "打开该患者的病历",
    "expired": "登录已过期，请重新登录。",
    "inactive": "您的账户未启用。",
    "no_patient": "没有这位患者。",
    "locked": "此账户登录失败次数过多，请在 {seconds} 秒后重试。",
    "invalid": "用户名或密码错误。",
}
LOCALES = {"en": _EN, "zh-CN": _ZH}
MAX_UI_LOCALES = 64


def pick_locale(ui_locales: str | None) -> str:
    """The first supported language among the preferred ones (``zh``, ``zh-CN``, ``zh-Hans`` →
    zh-CN; ``en-*`` → en); English when none is supported or none was given."""
    for tag in (ui_locales or "").split():
        language = tag.split("-", 1)[0].lower()
        if language == "zh":
            return "zh-CN"
        if language == "en":
            return "en"
    return "en"


def text(locale: str, key: str, **values: object) -> str:
    return LOCALES.get(locale, _EN)[key].format(**values)
