"""The pickle stack machine's primitives: stack, marks, memo and the work budget (`ReadLimits`), the
opcode loop, and the opcodes that only move values around (containers, memo, POP, PROTO).

The opcodes that name globals and build objects, and the opcode table, are `pickle_machine._Machine`.
"""
from __future__ import annotations

import pickletools
from typing import Any

from pthnet_jax.convert.errors import (CheckpointLimitError, CheckpointReadError,
                                       UnsafeCheckpointError, show)
from pthnet_jax.convert.pickle_tokens import _KEY_INT, _StorageRef
from pthnet_jax.convert.read_limits import ReadLimits


# --- the stack machine ----------------------------------------------------------------------------

class _PickleStack:
    """Stack, memo and budget of a pickle machine; `_table` (in the subclass) maps opcodes to handlers."""

    def __init__(self, data: bytes, limits: ReadLimits):
        self.data, self.limits = data, limits
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.items = 0
        self.object_bytes = 0
        self.storages: dict[str, _StorageRef] = {}
        self.tensors = 0

    # helpers
    def _fail(self, message: str, unsafe: bool = False) -> None:
        raise (UnsafeCheckpointError if unsafe else CheckpointReadError)(None, message)

    def _limit(self, what: str, limit: int) -> None:
        raise CheckpointLimitError(None, f"the pickle exceeds the reader's limit on {what} ({limit})")

    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            self._fail("corrupt pickle: stack underflow")
        return self.stack.pop()

    def _top(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            self._fail("corrupt pickle: stack underflow")
        return self.stack[-1]

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            self._fail("corrupt pickle: no MARK on the stack")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def _push(self, value: Any) -> None:
        if len(self.stack) + len(self.marks) >= self.limits.max_stack:
            self._limit("stack size", self.limits.max_stack)
        self.stack.append(value)

    def _count(self, n: int, container_len: int = 0) -> None:
        self.items += n
        if self.items > self.limits.max_items:
            self._limit("container elements", self.limits.max_items)
        if container_len + n > self.limits.max_container:
            self._limit("elements of one container", self.limits.max_container)

    def _bytes(self, n: int) -> None:
        self.object_bytes += n
        if self.object_bytes > self.limits.max_object_bytes:
            self._limit("bytes of strings and arrays in the pickle", self.limits.max_object_bytes)

    def _key(self, key: Any) -> Any:
        """Dict keys and set items: types whose hashes a file cannot make collide."""
        if isinstance(key, (str, bytes)) or key is None or isinstance(key, bool):
            return key
        if type(key) is int and -_KEY_INT <= key < _KEY_INT:
            return key
        if type(key) is float and key.is_integer() and -_KEY_INT <= key < _KEY_INT:
            return key
        self._fail(f"unsupported dict key or set item {show(key)} (only strings, bytes and small "
                   "integers are accepted)")

    def _int(self, value: int) -> int:
        if value.bit_length() > self.limits.max_int_bits:
            self._limit("integer size in bits", self.limits.max_int_bits)
        return value

    def _memo_put(self, index: Any) -> None:
        if type(index) is not int or index < 0:
            self._fail(f"corrupt pickle: memo index {show(index)}")
        if index not in self.memo and len(self.memo) >= self.limits.max_memo:
            self._limit("memo entries", self.limits.max_memo)
        self.memo[index] = self._top()

    def _memo_get(self, index: Any) -> None:
        if type(index) is not int or index not in self.memo:
            self._fail(f"corrupt pickle: memo index {show(index)} was never stored")
        self._push(self.memo[index])

    def _set_items(self, target: Any, pairs: list[Any]) -> None:
        if not isinstance(target, dict):
            self._fail(f"corrupt pickle: SETITEM(S) on a {type(target).__name__}, not a dict")
        if len(pairs) % 2:
            self._fail("corrupt pickle: odd number of items for SETITEMS")
        self._count(len(pairs) // 2, len(target))
        for i in range(0, len(pairs), 2):
            target[self._key(pairs[i])] = pairs[i + 1]

    # the loop
    def run(self) -> Any:
        limits = self.limits
        table = self._table()
        count = 0
        ops = pickletools.genops(self.data)
        while True:
            try:
                opcode, arg, _pos = next(ops)
            except StopIteration:
                self._fail("corrupt pickle: it ends without STOP")
            except (ValueError, OverflowError, UnicodeDecodeError, EOFError, IndexError,
                    TypeError) as err:
                self._fail(f"corrupt pickle: {show(str(err), 200)}")
            count += 1
            if count > limits.max_opcodes:
                self._limit("opcodes", limits.max_opcodes)
            name = opcode.name
            if name == "STOP":
                return self._pop()
            handler = table.get(name)
            if handler is None:
                self._fail(f"unsupported pickle opcode {name}", unsafe=True)
            handler(arg)

    def _table(self) -> dict[str, Any]:
        raise NotImplementedError  # pickle_machine._Machine: opcode name -> handler(arg)

    def _mark(self, arg: Any) -> None:
        if len(self.stack) + len(self.marks) >= self.limits.max_stack:
            self._limit("stack size", self.limits.max_stack)
        self.marks.append(len(self.stack))

    def _from_mark(self, name: str) -> None:
        items = self._pop_mark()
        self._count(len(items))
        if name == "TUPLE":
            self._push(tuple(items))
        elif name == "LIST":
            self._push(items)
        elif name == "FROZENSET":
            self._push(frozenset(self._key(i) for i in items))
        else:
            built: dict = {}
            self._set_items(built, items)
            self._push(built)

    def _small_tuple(self, n: int) -> None:
        items = [self._pop() for _ in range(n)][::-1]
        self._count(n)
        self._push(tuple(items))

    def _append(self, arg: Any) -> None:
        stack, marks = self.stack, self.marks
        if len(stack) < 2 or (marks and len(stack) - 1 <= marks[-1]):
            self._fail("corrupt pickle: stack underflow")
        target = stack[-2]
        if type(target) is not list:
            self._fail(f"corrupt pickle: APPEND to a {type(target).__name__}")
        self.items += 1
        if self.items > self.limits.max_items or len(target) >= self.limits.max_container:
            self._count(1, len(target))
        target.append(stack.pop())

    def _appends(self, arg: Any) -> None:
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, list):
            self._fail(f"corrupt pickle: APPENDS to a {type(target).__name__}")
        self._count(len(items), len(target))
        target.extend(items)

    def _setitem(self, arg: Any) -> None:
        value = self._pop()
        key = self._pop()
        self._set_items(self._top(), [key, value])

    def _set_items_at_top(self, items: list[Any]) -> None:
        self._set_items(self._top(), items)

    def _additems(self, arg: Any) -> None:
        items = self._pop_mark()
        target = self._top()
        if not isinstance(target, set):
            self._fail(f"corrupt pickle: ADDITEMS to a {type(target).__name__}")
        self._count(len(items), len(target))
        target.update(self._key(i) for i in items)

    def _pop_op(self, arg: Any) -> None:
        if self.stack and not (self.marks and len(self.stack) <= self.marks[-1]):
            self.stack.pop()
        else:
            self._pop_mark()

    def _proto(self, arg: Any) -> None:
        if not (type(arg) is int and 0 <= arg <= 5):
            self._fail(f"unsupported pickle protocol {show(arg)}")
