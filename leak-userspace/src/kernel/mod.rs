//! What the running kernel offers and how it lays things out: tracepoint record formats (`tracefs`) and type
//! information (`btf`). Nothing about kernel layouts is hard-coded elsewhere; it is looked up here.
pub mod btf;
pub mod tracefs;

pub use btf::KernelBtf;
pub use tracefs::{parse_format, read_format, tracefs_root, EventFormat, FieldFormat};
