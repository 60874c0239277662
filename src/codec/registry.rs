//! [`Codecs`]: which codec implementation serves which id.

use super::{Codec, CodecError, CodecId, NoCompression};
use std::fmt;
use std::sync::Arc;

/// A registry from [`CodecId`] to codec, used to decompress batches written with any codec.
///
/// Starts with [`NoCompression`]; add others with [`Codecs::with`]. Lookup is an array index.
///
/// ```
/// use streamhouse::codec::{CodecError, CodecId, Codecs};
///
/// let codecs = Codecs::new();
/// assert!(codecs.get(CodecId::NONE).is_ok());
/// assert!(matches!(codecs.get(CodecId::ZSTD), Err(CodecError::Unsupported(_))));
/// ```
#[derive(Clone)]
pub struct Codecs {
    slots: [Option<Arc<dyn Codec>>; 8],
}

impl Codecs {
    /// A registry holding only [`NoCompression`].
    pub fn new() -> Codecs {
        let mut slots: [Option<Arc<dyn Codec>>; 8] = Default::default();
        slots[0] = Some(Arc::new(NoCompression));
        Codecs { slots }
    }

    /// Registers `codec` under its id, replacing any codec already there.
    #[must_use]
    pub fn with(mut self, codec: Arc<dyn Codec>) -> Codecs {
        self.insert(codec);
        self
    }

    /// Registers `codec` under its id, replacing any codec already there.
    pub fn insert(&mut self, codec: Arc<dyn Codec>) {
        let slot = usize::from(codec.id().get());
        self.slots[slot] = Some(codec);
    }

    /// The codec for `id`, or [`CodecError::Unsupported`].
    pub fn get(&self, id: CodecId) -> Result<&dyn Codec, CodecError> {
        self.slots[usize::from(id.get())]
            .as_deref()
            .ok_or(CodecError::Unsupported(id))
    }

    /// The ids that have a codec, in ascending order.
    pub fn ids(&self) -> impl Iterator<Item = CodecId> + '_ {
        self.slots.iter().flatten().map(|codec| codec.id())
    }
}

impl Default for Codecs {
    fn default() -> Codecs {
        Codecs::new()
    }
}

impl fmt::Debug for Codecs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.ids()).finish()
    }
}
