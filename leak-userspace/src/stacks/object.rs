//! What unwinding needs of one object file (executable or shared library): its call frame information
//! (`.eh_frame` with `.eh_frame_hdr`, or `.debug_frame`), where its code lies, and how its segments map, read once
//! per file and shared by every process that maps it.
use std::{ops::Range, sync::Arc};

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSegment, SectionFlags, SegmentFlags};

/// Section bytes shared between the object cache and every module built from it.
pub type Bytes = Arc<[u8]>;

const SHF_EXECINSTR: u64 = 0x4;
const PF_X: u32 = 0x1;

#[derive(Debug)]
pub struct UnwindObject {
    /// The GNU build id: the same object in two containers (two paths, two inodes) is read once.
    pub build_id: Option<Vec<u8>>,
    eh_frame: Option<(Range<u64>, Bytes)>,
    eh_frame_hdr: Option<(Range<u64>, Bytes)>,
    debug_frame: Option<Bytes>,
    text: Option<Range<u64>>,
    got: Option<Range<u64>>,
    /// Executable sections (SVMAs): a return address elsewhere is not code, whatever the mapping says.
    code: Vec<Range<u64>>,
    /// Executable PT_LOAD segments: (file offset, vaddr, file size).
    exec_segments: Vec<(u64, u64, u64)>,
}

impl UnwindObject {
    pub fn parse(data: &[u8]) -> Result<Self> {
        let file = object::File::parse(data).context("not an object file")?;
        let section = |name: &str| {
            let s = file.section_by_name(name)?;
            let bytes: Bytes = s.data().ok()?.into();
            Some((s.address()..s.address() + s.size(), bytes))
        };
        let range = |name: &str| file.section_by_name(name).map(|s| s.address()..s.address() + s.size());
        let code = file
            .sections()
            .filter(|s| matches!(s.flags(), SectionFlags::Elf { sh_flags } if sh_flags & SHF_EXECINSTR != 0))
            .map(|s| s.address()..s.address() + s.size())
            .collect();
        let exec_segments = file
            .segments()
            .filter(|s| matches!(s.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0))
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, s.address(), size)
            })
            .collect();
        Ok(UnwindObject {
            build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            debug_frame: section(".debug_frame").map(|(_, b)| b),
            text: range(".text"),
            got: range(".got"),
            code,
            exec_segments,
        })
    }

    /// Whether the object carries call frame information at all (else its frames unwind by frame pointer).
    pub fn has_cfi(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// The load bias of a mapping of this object at `start` from file offset `offset`: SVMA + bias = AVMA.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let page = 4096;
        self.exec_segments
            .iter()
            .find(|&&(seg_off, _, size)| seg_off & !(page - 1) <= offset && offset < seg_off + size.max(1))
            .map(|&(seg_off, vaddr, _)| start.wrapping_sub(vaddr.wrapping_add(offset).wrapping_sub(seg_off)))
    }

    /// Whether `svma` lies in an executable section. Objects without section headers (stripped of them) are
    /// given the benefit of the doubt.
    pub fn is_code(&self, svma: u64) -> bool {
        self.code.is_empty() || self.code.iter().any(|r| r.contains(&svma))
    }

    /// The unwinder's view of this object mapped at `avma` with load bias `bias`.
    pub fn module(&self, name: &str, avma: Range<u64>, bias: u64) -> framehop::Module<Bytes> {
        let info = framehop::ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text.clone(),
            got_svma: self.got.clone(),
            eh_frame_svma: self.eh_frame.as_ref().map(|(r, _)| r.clone()),
            eh_frame: self.eh_frame.as_ref().map(|(_, b)| b.clone()),
            eh_frame_hdr_svma: self.eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
            eh_frame_hdr: self.eh_frame_hdr.as_ref().map(|(_, b)| b.clone()),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        };
        framehop::Module::new(name.to_string(), avma, bias, info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary itself: built by cargo with CFI, a build id and executable sections.
    #[test]
    fn reads_the_running_binary() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let o = UnwindObject::parse(&exe).unwrap();
        assert!(o.has_cfi());
        assert!(o.build_id.is_some());
        let text = o.text.clone().unwrap();
        assert!(o.is_code(text.start));
        assert!(!o.is_code(o.eh_frame.as_ref().unwrap().0.start), ".eh_frame is data");
        assert!(UnwindObject::parse(b"not an elf").is_err());
    }

    #[test]
    fn bias_of_a_mapping_follows_its_segment() {
        let o = UnwindObject {
            build_id: None,
            eh_frame: None,
            eh_frame_hdr: None,
            debug_frame: None,
            text: None,
            got: None,
            code: vec![],
            // A typical PIE: code at file offset 0x1000, vaddr 0x1000, 0x2345 bytes.
            exec_segments: vec![(0x1000, 0x1000, 0x2345)],
        };
        assert_eq!(o.bias(0x5555_5555_5000, 0x1000), Some(0x5555_5555_4000));
        // An old-style layout: one segment from offset 0 with vaddr 0x400000 (non-PIE).
        let fixed = UnwindObject { exec_segments: vec![(0, 0x40_0000, 0x9000)], ..o };
        assert_eq!(fixed.bias(0x40_0000, 0), Some(0));
        assert_eq!(fixed.bias(0x40_0000, 0x10_0000), None, "offset outside every executable segment");
    }
}
