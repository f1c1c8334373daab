"""The pickle stack machine's object building: allowlisted globals, REDUCE/BUILD/NEWOBJ of the few
rebuilds it knows (tensors, storages, OrderedDict, numpy arrays/dtypes/scalars, sets, bytes), inert
`Placeholder`s for `__main__` classes, and the opcode table. Its primitives are `pickle_stack`.
"""
from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

from pthnet_jax.convert.errors import UnsafeCheckpointError, show
from pthnet_jax.convert.pickle_stack import _PickleStack
from pthnet_jax.convert.pickle_tokens import (_ALLOWED, _MODULE_ALIASES, _NAME, _PLACEHOLDER_MODULES,
                                              _STORAGE_DTYPES, _STORAGE_KEY, _ArrayHolder, _checked_dtype,
                                              _DtypeHolder, _Global, _StorageRef, _TensorRef)
from pthnet_jax.convert.read_limits import _DIM_LIMIT, Placeholder


class _Machine(_PickleStack):
    """Runs a pickle's opcodes (from `pickletools.genops`) building only inert, checked values."""

    # globals
    def _global(self, module: Any, name: Any) -> _Global:
        if not isinstance(module, str) or not isinstance(name, str):
            self._fail("corrupt pickle: global name is not a string")
        module = _MODULE_ALIASES.get(module, module)
        path = f"{module}.{name}"
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Global("storage_type", path, _STORAGE_DTYPES[name])
        kind = _ALLOWED.get((module, name))
        if kind is not None:
            return _Global(kind, path)
        if module in _PLACEHOLDER_MODULES and _NAME.match(name):
            return _Global("placeholder", path)
        raise UnsafeCheckpointError(
            None, f"the pickle references the global '{show(path, 200)}', which is not on the allowlist "
            "of tensor/container types; refusing to load it (nothing was executed)")

    def _instantiate(self, cls: Any, args: Any, how: str) -> Placeholder:
        if not isinstance(cls, _Global) or cls.kind != "placeholder":
            self._fail(f"{how} of {show(cls)} is not allowed (only classes of __main__ become inert "
                       "placeholders)", unsafe=True)
        args = tuple(args) if isinstance(args, (tuple, list)) else ()
        return Placeholder(cls.path, args)

    # REDUCE: calls of allowlisted globals, each a checked rebuild written here
    def _call(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global):
            self._fail(f"REDUCE on {show(type(func).__name__)}, which is not an allowed callable",
                       unsafe=True)
        if not isinstance(args, tuple):
            self._fail(f"REDUCE of {func.path} with arguments that are not a tuple")
        kind = func.kind
        if kind in ("tensor_v2", "tensor"):
            return self._tensor(func, args)
        if kind == "parameter":
            if not args or not isinstance(args[0], _TensorRef):
                self._fail(f"{func.path} of something that is not a tensor")
            return args[0]
        if kind == "from_type_v2":
            if len(args) != 4 or not isinstance(args[0], _Global) or args[0].kind not in ("tensor_v2",
                                                                                          "tensor"):
                self._fail(f"{func.path} with unexpected arguments", unsafe=True)
            if not (isinstance(args[1], _Global) and args[1].kind == "tensor_type"):
                self._fail(f"{func.path} of the type {show(args[1])} is not allowed", unsafe=True)
            if not isinstance(args[2], tuple):
                self._fail(f"{func.path} with arguments that are not a tuple")
            return self._tensor(args[0], args[2])
        if kind == "ordered_dict":
            result: collections.OrderedDict = collections.OrderedDict()
            if args:
                if len(args) != 1 or not isinstance(args[0], (list, tuple)):
                    self._fail("OrderedDict with unexpected arguments")
                self._count(len(args[0]))
                for pair in args[0]:
                    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                        self._fail("OrderedDict item that is not a pair")
                    result[self._key(pair[0])] = pair[1]
            return result
        if kind == "codecs_encode":
            if not (1 <= len(args) <= 2) or not isinstance(args[0], str):
                self._fail("_codecs.encode with unexpected arguments")
            encoding = args[1] if len(args) == 2 else "utf-8"
            if encoding not in ("latin1", "latin-1", "iso-8859-1"):
                self._fail(f"_codecs.encode with encoding {show(encoding)} is not allowed", unsafe=True)
            self._bytes(len(args[0]))
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError as err:
                self._fail(f"_codecs.encode of text that is not latin-1 ({err.reason})")
        if kind == "bytes":
            if args:
                self._fail("builtins.bytes with arguments is not allowed", unsafe=True)
            return b""
        if kind == "reconstruct":
            if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].kind == "ndarray"):
                self._fail(f"{func.path} of {show(args[0] if args else None)} is not allowed", unsafe=True)
            return _ArrayHolder()
        if kind == "dtype":
            if not args:
                self._fail("numpy.dtype without arguments")
            return _DtypeHolder(_checked_dtype(args[0], "numpy.dtype"))
        if kind == "scalar":
            if len(args) != 2 or not isinstance(args[1], bytes):
                self._fail("numpy scalar with unexpected arguments", unsafe=True)
            dtype = _checked_dtype(args[0], "numpy scalar")
            if len(args[1]) != dtype.itemsize:
                self._fail(f"numpy scalar of {dtype} with {len(args[1])} bytes")
            return np.frombuffer(args[1], dtype=dtype, count=1).astype(dtype.newbyteorder("="))[0]
        if kind in ("set", "frozenset"):
            items: Any = args[0] if args else ()
            if len(args) > 1 or not isinstance(items, (list, tuple)):
                self._fail(f"{func.path} with unexpected arguments")
            self._count(len(items))
            built = {self._key(item) for item in items}
            return built if kind == "set" else frozenset(built)
        if kind == "complex":
            if not (1 <= len(args) <= 2) or not all(type(a) in (int, float) for a in args):
                self._fail("complex with unexpected arguments")
            try:
                return complex(*args)
            except OverflowError:
                self._fail("complex of an integer too large")
        if kind == "reconstructor":  # protocol 0/1 objects: copyreg._reconstructor(cls, object, None)
            if len(args) != 3 or not (isinstance(args[1], _Global) and args[1].kind == "object") \
                    or args[2] is not None:
                self._fail("copyreg._reconstructor with unexpected arguments", unsafe=True)
            return self._instantiate(args[0], (), "copyreg._reconstructor")
        if kind == "placeholder":
            return self._instantiate(func, args, "a call")
        self._fail(f"calling {func.path} is not allowed", unsafe=True)

    def _tensor(self, func: _Global, args: tuple) -> _TensorRef:
        wanted = (4,) if func.kind == "tensor" else (6, 7)
        if len(args) not in wanted:
            self._fail(f"{func.path} with {len(args)} arguments")
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, _StorageRef):
            self._fail(f"{func.path} of something that is not a storage")
        if type(offset) is not int or not isinstance(size, (tuple, list)) \
                or not isinstance(stride, (tuple, list)):
            self._fail(f"{func.path}: storage offset, sizes and strides must be integers")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or len(size) > self.limits.max_ndim:
            self._fail(f"tensor with {len(size)} sizes and {len(stride)} strides (at most "
                       f"{self.limits.max_ndim} dimensions, as many strides as sizes)")
        if not all(type(v) is int and 0 <= v < _DIM_LIMIT for v in (offset, *size, *stride)):
            self._fail(f"tensor view (offset {show(offset)}, sizes {show(size)}, strides {show(stride)}): "
                       "offset, sizes and strides must be non-negative integers")
        if math.prod(max(n, 1) for n in size) >= _DIM_LIMIT:
            self._fail(f"tensor view with sizes {show(size)}: too many elements")
        stride = tuple(s if n > 1 else 0 for n, s in zip(size, stride))  # unused strides: no effect
        numel = math.prod(size)
        extent = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if numel else 0
        if extent > storage.numel:
            self._fail(f"tensor view (offset {offset}, sizes {size}, strides {stride}) reads past the end "
                       f"of its storage '{show(storage.key)}' of {storage.numel} elements")
        self.tensors += 1
        if self.tensors > self.limits.max_tensors:
            self._limit("tensors", self.limits.max_tensors)
        return _TensorRef(storage, offset, size, stride, numel, extent)

    def _persistent(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            self._fail(f"unexpected persistent id {show(pid)}")
        _, stype, key, location, numel = pid
        if not (isinstance(stype, _Global) and stype.kind == "storage_type"):
            self._fail(f"storage of unknown type {show(stype)}", unsafe=True)
        if not isinstance(key, str) or not _STORAGE_KEY.match(key):
            self._fail(f"storage with an invalid key {show(key)}")
        if not isinstance(location, str) or len(location) > 64:
            self._fail(f"storage with an invalid location {show(location)}")
        if type(numel) is not int or not 0 <= numel < _DIM_LIMIT:
            self._fail(f"storage '{key}' with an invalid element count {show(numel)}")
        known = self.storages.get(key)
        if known is not None:
            if known.dtype != stype.dtype or known.numel != numel:
                self._fail(f"storage '{key}' is referenced with different types or sizes")
            return known
        if len(self.storages) >= self.limits.max_tensors:
            self._limit("storages", self.limits.max_tensors)
        ref = _StorageRef(key, stype.dtype, numel, location)
        self.storages[key] = ref
        return ref

    def _build(self, target: Any, state: Any) -> None:
        if isinstance(target, Placeholder):
            target.state = state
        elif isinstance(target, _ArrayHolder):
            if target.array is not None:
                self._fail("numpy array built twice")
            target.array = self._array(state)
        elif isinstance(target, _DtypeHolder):
            if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
                self._fail(f"numpy dtype state {show(state)} is not allowed", unsafe=True)
            if state[1] in "<>" and target.dtype.itemsize > 1:
                target.dtype = target.dtype.newbyteorder(state[1])
        elif isinstance(target, dict) and (state is None or isinstance(state, dict)):
            pass  # attributes of a dict subclass (a state dict's `_metadata` versions): not kept
        else:
            self._fail(f"BUILD on a {type(target).__name__} is not allowed (only numpy arrays, dtypes and "
                       "placeholders take a state)", unsafe=True)

    def _array(self, state: Any) -> np.ndarray:
        if not isinstance(state, tuple) or len(state) != 5:
            self._fail("numpy array state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, raw = state
        dtype = _checked_dtype(dtype, "numpy array")
        if not isinstance(shape, (tuple, list)) or len(shape) > self.limits.max_ndim or \
                not all(type(n) is int and 0 <= n < _DIM_LIMIT for n in shape):
            self._fail(f"numpy array with shape {show(shape)}")
        if math.prod(max(n, 1) for n in shape) >= _DIM_LIMIT:
            self._fail(f"numpy array with shape {show(shape)}: too many elements")
        if not isinstance(raw, bytes):
            self._fail("numpy array whose data is not bytes (object arrays are not allowed)", unsafe=True)
        count = math.prod(shape)
        if count * dtype.itemsize != len(raw):
            self._fail(f"numpy array of shape {show(shape)} and dtype {dtype} with {len(raw)} bytes of data")
        self._bytes(len(raw))
        flat = np.frombuffer(raw, dtype=dtype, count=count)  # a view of a bytes object, length checked
        array = flat.reshape(tuple(shape), order="F" if fortran else "C")
        return np.array(array, dtype=dtype.newbyteorder("="), order="C")  # own, native-order memory

    def _table(self) -> dict[str, Any]:
        """Opcode name -> handler(arg); a dict lookup per opcode keeps the loop fast."""
        push = self._push

        def constant(value):
            return lambda arg: push(value)

        def integer(arg):
            push(self._int(arg) if type(arg) is int else arg)

        def text(arg):
            self._bytes(len(arg))
            push(arg)

        def data(arg):
            self._bytes(len(arg))
            push(bytes(arg))

        def refuse(message):
            def handler(arg):
                self._fail(message, unsafe=True)
            return handler

        table: dict[str, Any] = {
            "NONE": constant(None), "NEWTRUE": constant(True), "NEWFALSE": constant(False),
            "EMPTY_TUPLE": constant(()),
            "EMPTY_LIST": lambda arg: push([]), "EMPTY_DICT": lambda arg: push({}),
            "EMPTY_SET": lambda arg: push(set()),
            "FLOAT": lambda arg: push(float(arg)), "BINFLOAT": lambda arg: push(float(arg)),
            "MARK": self._mark, "TUPLE": self._from_mark, "LIST": self._from_mark, "DICT": self._from_mark,
            "FROZENSET": self._from_mark,
            "TUPLE1": lambda arg: self._small_tuple(1), "TUPLE2": lambda arg: self._small_tuple(2),
            "TUPLE3": lambda arg: self._small_tuple(3),
            "APPEND": self._append, "APPENDS": self._appends, "SETITEM": self._setitem,
            "SETITEMS": lambda arg: self._set_items_at_top(self._pop_mark()),
            "ADDITEMS": self._additems, "POP": self._pop_op, "POP_MARK": lambda arg: self._pop_mark(),
            "DUP": lambda arg: push(self._top()),
            "PUT": self._memo_put, "BINPUT": self._memo_put, "LONG_BINPUT": self._memo_put,
            "MEMOIZE": lambda arg: self._memo_put(len(self.memo)),
            "GET": self._memo_get, "BINGET": self._memo_get, "LONG_BINGET": self._memo_get,
            "GLOBAL": self._global_op, "STACK_GLOBAL": self._stack_global,
            "REDUCE": self._reduce, "BUILD": self._build_op, "NEWOBJ": self._newobj,
            "NEWOBJ_EX": self._newobj_ex, "OBJ": self._obj, "INST": self._inst,
            "BINPERSID": lambda arg: push(self._persistent(self._pop())),
            "PROTO": self._proto, "FRAME": lambda arg: None,
            "PERSID": refuse("text persistent ids (PERSID) are not used by torch.save"),
            "EXT1": refuse(_EXT_MESSAGE), "EXT2": refuse(_EXT_MESSAGE), "EXT4": refuse(_EXT_MESSAGE),
            "NEXT_BUFFER": refuse("out-of-band buffers are not allowed"),
            "READONLY_BUFFER": refuse("out-of-band buffers are not allowed"),
        }
        for name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            table[name] = integer
        for name in ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                     "BINUNICODE8"):
            table[name] = text
        for name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
            table[name] = data
        # TUPLE/LIST/DICT/FROZENSET share a handler that needs the opcode's name
        for name in ("TUPLE", "LIST", "DICT", "FROZENSET"):
            table[name] = (lambda n: lambda arg: self._from_mark(n))(name)
        return table

    def _global_op(self, arg: Any) -> None:
        module, _, attr = arg.partition(" ")
        self._push(self._global(module, attr))

    def _stack_global(self, arg: Any) -> None:
        attr = self._pop()
        module = self._pop()
        self._push(self._global(module, attr))

    def _reduce(self, arg: Any) -> None:
        args = self._pop()
        func = self._pop()
        self._push(self._call(func, args))

    def _build_op(self, arg: Any) -> None:
        state = self._pop()
        self._build(self._top(), state)

    def _newobj(self, arg: Any) -> None:
        args = self._pop()
        cls = self._pop()
        self._push(self._instantiate(cls, args, "NEWOBJ"))

    def _newobj_ex(self, arg: Any) -> None:
        self._pop()  # kwargs
        args = self._pop()
        cls = self._pop()
        self._push(self._instantiate(cls, args, "NEWOBJ_EX"))

    def _obj(self, arg: Any) -> None:
        items = self._pop_mark()
        if not items:
            self._fail("corrupt pickle: OBJ without a class")
        self._push(self._instantiate(items[0], items[1:], "OBJ"))

    def _inst(self, arg: Any) -> None:
        module, _, attr = arg.partition(" ")
        items = self._pop_mark()
        self._push(self._instantiate(self._global(module, attr), items, "INST"))


_EXT_MESSAGE = ("the pickle uses the extension registry (EXT opcodes), which could name any global; "
                "refusing it")
