"""Proto enums <-> OpenAI's strings, each table defined once and derived from
the enum's value names: FINISH_REASON_TOOL_CALLS is "tool_calls"."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Generic, TypeVar

from aqueduct.files.v1 import files_pb2
from aqueduct.inference.v1 import inference_pb2
from google.protobuf.descriptor import EnumDescriptor

V = TypeVar("V", bound=int)


class EnumNames(dict[V, str], Generic[V]):
    """An enum's strings by value (a plain dict: lookups stay cheap on the hot
    path) and its values by string; the `..._UNSPECIFIED` zero has no string."""

    def __init__(self, enum: EnumDescriptor, spellings: Mapping[str, str] | None = None) -> None:
        prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
        names: dict[V, str] = {}
        for value in enum.values:
            name = value.name.removeprefix(prefix).lower()
            if name != "unspecified":
                names[value.number] = (spellings or {}).get(name, name)  # type: ignore[index]
        super().__init__(names)
        self.by_name: dict[str, V] = {name: value for value, name in names.items()}
        self.names = tuple(self.by_name)  # in the proto's order


FINISH_REASONS = EnumNames[inference_pb2.FinishReason.ValueType](
    inference_pb2.FinishReason.DESCRIPTOR
)
FILE_PURPOSES = EnumNames[files_pb2.FilePurpose.ValueType](
    files_pb2.FilePurpose.DESCRIPTOR,
    {"fine_tune": "fine-tune"},  # OpenAI's spelling
)
BATCH_STATUSES = EnumNames[files_pb2.BatchStatus.ValueType](files_pb2.BatchStatus.DESCRIPTOR)
