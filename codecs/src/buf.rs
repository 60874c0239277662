//! Writing a C library's output straight into the caller's `BytesMut`.

use bytes::BytesMut;

/// Grows `out` by `len` bytes, lets `write` fill them, and keeps only the count it reports.
/// On error `out` is left as it was, so a failed (de)compression never leaves partial output.
pub(crate) fn write_into<E>(
    out: &mut BytesMut,
    len: usize,
    write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
) -> Result<usize, E> {
    let start = out.len();
    out.resize(start + len, 0);
    match write(&mut out[start..]) {
        Ok(written) => {
            out.truncate(start + written.min(len));
            Ok(written)
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}
