//! What the running kernel offers and how it lays things out: tracepoint record formats (`tracefs`) and type
//! information (`btf`), and whether this process may trace (`caps`). Nothing about kernel layouts is hard-coded elsewhere; it is looked up here.
pub mod btf;
pub mod caps;
pub mod tracefs;

pub use btf::KernelBtf;
pub use tracefs::{parse_format, read_format, tracefs_root, EventFormat, FieldFormat};
