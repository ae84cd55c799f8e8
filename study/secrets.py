"""Interim: masking secrets in URLs (the storage rework replaces this)."""

import re


def mask_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", str(url))
