"""Plain-document helpers for the engine: a fast copy, and the minimal JSON Patch between two documents."""

from __future__ import annotations

from typing import Any

from policies.patch import PatchOp, copy_tree, escape_token

__all__ = ["copy_tree", "diff_documents"]


def _same(old: Any, new: Any) -> bool:
    return type(old) is type(new) and old == new


def _containers(old: Any, new: Any) -> bool:
    """Both dicts or both lists: compared member by member (comparing them whole first would walk each
    changed subtree once per level above its change)."""
    kind = type(old)
    return kind is type(new) and (kind is dict or kind is list)


def diff_documents(old: Any, new: Any, path: str = "") -> list[PatchOp]:
    """Operations that turn `old` into `new`: removals, additions and leaf replacements only where they
    differ; a list that only grew gets `add`s at its end; any other list change replaces the list.
    Mappings other than dicts are compared whole (the engine's documents are plain dicts). Subtrees that are
    the same object (a copy-on-write working document shares them) are skipped without comparing."""
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[PatchOp] = []
        for key in old:
            if key not in new:
                ops.append(PatchOp("remove", f"{path}/{escape_token(key)}"))
        for key, value in new.items():
            if key not in old:
                ops.append(PatchOp("add", f"{path}/{escape_token(key)}", copy_tree(value)))
                continue
            before = old[key]
            if before is not value and (_containers(before, value) or not _same(before, value)):
                ops.extend(diff_documents(before, value, f"{path}/{escape_token(key)}"))
        return ops
    if isinstance(old, list) and isinstance(new, list):
        if len(new) >= len(old):
            ops = []
            for index, (before, after) in enumerate(zip(old, new, strict=False)):
                if before is not after and (_containers(before, after) or not _same(before, after)):
                    ops.extend(diff_documents(before, after, f"{path}/{index}"))
            ops.extend(
                PatchOp("add", f"{path}/{index}", copy_tree(new[index]))
                for index in range(len(old), len(new))
            )
            return ops
        return [PatchOp("replace", path, copy_tree(new))]
    if _same(old, new):
        return []
    return [PatchOp("replace", path, copy_tree(new))]
