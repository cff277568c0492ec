"""QINS: the seed's inverse-magnitude weight codec, as a lossless container and a torch runtime.

    python -m export.qins --model runs/demo/heal/student --out out/student.qins [--check]

Every 2-D weight is quantized row by row to a sign and an 8-bit code s with

    w = sign * scale / s        s in 1..255, code 0 = exact zero, scale = max |w| of the row,

decoded through a 256-entry table (LUT[0] = 0, LUT[s] = 1 / s). The grid is the reciprocal of a
uniform one: dense near zero (steps of about scale / 65000 at s = 255) and coarse near the row
maximum, with no level between scale / 2 and scale. The codes are then stored losslessly:

- per-row scales (float16 where every scale fits it, else float32);
- the zero/non-zero pattern: inline (zero is one more Huffman symbol), a bitmask, or LEB128 zero
  run lengths, whichever is smallest for that tensor;
- the signs of the non-zero weights, one bit each;
- the codes, canonical-Huffman coded (lengths limited to 15 bits), with the bit length of every
  1024-symbol block so that all blocks decode in lockstep with numpy.

The same container also stores a `linear` grid (sign + magnitude 0..127, w = scale * m / 127),
which is symmetric per-row int8 with the same entropy coding: the comparison that separates what
the grid costs from what Huffman coding saves. `linear15` and `linear7` (int5 and int4 levels)
are the same with fewer levels, for comparisons at the size QINS reaches. Plain int8 (one byte a
weight in safetensors) is `save_int8` / `load_int8`.

The modules, each building on the ones before it:

    codec      the grids and the quantizer (QuantizedTensor), QINSFormatError
    huffman    canonical, length-limited Huffman coding in lockstep-decodable blocks
    sparsity   the zero pattern as a bitmask or LEB128 run lengths
    payload    one coded tensor's bytes (scales, code lengths, blocks, zeros, signs, stream)
    container  the checksummed .qins file (layout in its docstring)
    runtime    torch modules that run from codes (QINSLinear, CodedEmbedding), load_qins
    encoder    whole models into a file (QINSConfig, save_qins, the report)
    int8       the plain int8 safetensors baseline
    cli        `python -m export.qins`

What is imported here is the API the rest of the project uses; the helpers stay in their modules.
"""

from export.qins.cli import main
from export.qins.codec import GRIDS, LINEAR_TOP, QINSFormatError, QuantizedTensor, grid_lut, quantize
from export.qins.container import FORMAT_VERSION, Entry, read_container, read_header, write_container
from export.qins.encoder import (
    EMBEDDINGS,
    QINSConfig,
    QINSReport,
    TensorStats,
    dequantized_model,
    model_tensors,
    save_model_qins,
    save_qins,
)
from export.qins.huffman import BLOCK, MAX_CODE_BITS, huffman_decode, huffman_encode, huffman_lengths
from export.qins.int8 import Int8Weight, load_int8, quantize_int8, save_int8
from export.qins.payload import SECTIONS, decode_quantized, encode_quantized
from export.qins.runtime import (
    CodedEmbedding,
    CodedLinear,
    CodedWeight,
    QINSLinear,
    QINSWeight,
    attach_coded,
    load_qins,
    set_cache,
)
from export.qins.sparsity import SPARSITY

__all__ = [
    "GRIDS", "LINEAR_TOP", "QINSFormatError", "QuantizedTensor", "grid_lut", "quantize",
    "BLOCK", "MAX_CODE_BITS", "huffman_decode", "huffman_encode", "huffman_lengths",
    "SPARSITY", "SECTIONS", "decode_quantized", "encode_quantized",
    "FORMAT_VERSION", "Entry", "read_container", "read_header", "write_container",
    "CodedEmbedding", "CodedLinear", "CodedWeight", "QINSLinear", "QINSWeight", "attach_coded", "load_qins",
    "set_cache",
    "EMBEDDINGS", "QINSConfig", "QINSReport", "TensorStats", "dequantized_model", "model_tensors", "save_model_qins",
    "save_qins",
    "Int8Weight", "load_int8", "quantize_int8", "save_int8",
    "main",
]
