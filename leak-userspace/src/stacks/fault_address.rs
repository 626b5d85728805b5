//! Where a user page fault hit, worked out from the faulting instruction: a page's stack sample carries the
//! registers its thread entered the kernel with, and the instruction at their ip, decoded (iced-x86), says which
//! location it wrote or read. The kernel hands the address itself (CR2) only to a tracepoint on every page fault
//! of the machine, and a program there cost every fault of every process a program run, traced or not.
use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess, Register};
use leak_common::{StackSample, GP_REGS, STACK_SAMPLE_REGS};

/// The longest x86 instruction.
pub const MAX_INSTRUCTION: usize = 15;

/// x86 exceptions' event type in FRED's saved `ss` (bits 48-51), and the page fault's vector (bits 32-39).
const FRED_HW_EXCEPTION: u64 = 3;
const PAGE_FAULT_VECTOR: u64 = 14;

/// Whether the sample's thread was taking a user page fault. The entry code writes -1 over an exception's
/// `orig_ax` (a system call leaves its number there); under FRED, the event's type and vector are in `ss`.
/// Not told apart, as before: an interrupt's page allocation on top of the thread in user mode.
pub fn in_page_fault(sample: &StackSample) -> bool {
    if sample.flags & STACK_SAMPLE_REGS == 0 {
        return false;
    }
    let fred = (sample.ss >> 48) & 0xf == FRED_HW_EXCEPTION && (sample.ss >> 32) & 0xff == PAGE_FAULT_VECTOR;
    sample.orig_ax == u64::MAX || fred
}

/// The user address the instruction `code` (at the sample's ip) faulted at: the location it writes (a fault that
/// allocates a page is nearly always a write: a read of untouched anonymous memory maps the zero page), else the
/// one it reads; a push's or call's is below the stack pointer. `None`: no instruction, no memory operand, or one
/// the sample's registers cannot give (fs/gs-relative, a vector index).
pub fn address(code: &[u8], sample: &StackSample) -> Option<u64> {
    let instruction = Decoder::with_ip(64, code, sample.ip, DecoderOptions::NONE).decode();
    if instruction.is_invalid() {
        return None;
    }
    let mut factory = InstructionInfoFactory::new();
    let used = factory.info(&instruction).used_memory();
    let writes = |m: &&iced_x86::UsedMemory| {
        matches!(m.access(), OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite)
    };
    let memory = used.iter().find(writes).or_else(|| used.first())?;
    if matches!(memory.segment(), Register::FS | Register::GS) {
        return None;
    }
    memory.try_virtual_address(0, |register, _, _| value(sample, register))
}

/// A register's value in the sample, cut to the register's size; segment bases other than fs and gs are 0 in
/// 64-bit mode.
fn value(sample: &StackSample, register: Register) -> Option<u64> {
    let full = match register.full_register() {
        Register::RSP => sample.sp,
        Register::RIP => sample.ip,
        Register::ES | Register::CS | Register::SS | Register::DS => return Some(0),
        full => sample.gp[gp_index(full)?],
    };
    Some(match register.size() {
        8 => full,
        4 => full & 0xffff_ffff,
        2 => full & 0xffff,
        _ => return None,
    })
}

/// Where a 64-bit general register sits in `StackSample::gp` (`leak_common::GP_REG_NAMES`).
fn gp_index(register: Register) -> Option<usize> {
    use Register::{R10, R11, R12, R13, R14, R15, R8, R9, RAX, RBP, RBX, RCX, RDI, RDX, RSI};
    const ORDER: [Register; GP_REGS] = [R15, R14, R13, R12, RBP, RBX, R11, R10, R9, R8, RAX, RCX, RDX, RSI, RDI];
    ORDER.iter().position(|&r| r == register)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: u64 = 0x5555_5555_1000;
    const SP: u64 = 0x7ffc_0000_8000;

    /// A sample whose thread faulted at IP with `regs` set (by name) and the others 0.
    fn fault(regs: &[(&str, u64)]) -> StackSample {
        let mut s = StackSample { ip: IP, sp: SP, orig_ax: u64::MAX, flags: STACK_SAMPLE_REGS, ..Default::default() };
        for &(name, v) in regs {
            let i = leak_common::GP_REG_NAMES.iter().position(|&n| n == name).unwrap();
            s.gp[i] = v;
        }
        s
    }

    #[test]
    fn a_store_faults_at_its_destination() {
        // movb $1, (%rax): a page touched in a loop.
        assert_eq!(address(&[0xc6, 0x00, 0x01], &fault(&[("ax", 0x7f00_1234_5000)])), Some(0x7f00_1234_5000));
        // mov %edx, 0x10(%rdi,%rcx,4)
        let s = fault(&[("di", 0x5600_0000_0000), ("cx", 3), ("dx", 9)]);
        assert_eq!(address(&[0x89, 0x54, 0x8f, 0x10], &s), Some(0x5600_0000_0000 + 12 + 0x10));
        // vmovdqu %ymm0, -0x20(%rdi,%rdx): memset's and memcpy's stores.
        let s = fault(&[("di", 0x7f00_0000_0000), ("dx", 0x1000)]);
        assert_eq!(address(&[0xc5, 0xfe, 0x7f, 0x44, 0x17, 0xe0], &s), Some(0x7f00_0000_1000 - 0x20));
    }

    #[test]
    fn a_string_instruction_faults_where_its_destination_pointer_is() {
        // rep stosb: memset's large fills; rep movsb: memcpy's, which also reads at rsi.
        let s = fault(&[("di", 0x7f00_0000_3000), ("si", 0x5600_0000_0000), ("cx", 4096)]);
        assert_eq!(address(&[0xf3, 0xaa], &s), Some(0x7f00_0000_3000));
        assert_eq!(address(&[0xf3, 0xa4], &s), Some(0x7f00_0000_3000));
    }

    #[test]
    fn a_push_or_call_faults_below_the_stack_pointer() {
        assert_eq!(address(&[0x55], &fault(&[])), Some(SP - 8), "push %rbp");
        assert_eq!(address(&[0xe8, 0, 0, 0, 0], &fault(&[])), Some(SP - 8), "call");
    }

    #[test]
    fn rip_relative_stores_are_absolute() {
        // movl $1, 0x100(%rip): a global in the program's .bss; the 10-byte instruction ends at IP + 10.
        let code = [0xc7, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00];
        assert_eq!(address(&code, &fault(&[])), Some(IP + 10 + 0x100));
    }

    #[test]
    fn a_load_faults_at_its_source_when_nothing_is_written() {
        // mov (%rsi), %rax
        assert_eq!(address(&[0x48, 0x8b, 0x06], &fault(&[("si", 0x7f00_0000_2000)])), Some(0x7f00_0000_2000));
    }

    #[test]
    fn what_the_registers_cannot_give_is_unknown() {
        assert_eq!(address(&[0x64, 0x48, 0x89, 0x04, 0x25, 0x28, 0, 0, 0], &fault(&[])), None, "mov %rax, %fs:0x28");
        assert_eq!(address(&[0x48, 0x89, 0xc3], &fault(&[])), None, "mov %rax, %rbx touches no memory");
        assert_eq!(address(&[], &fault(&[])), None, "no bytes could be read");
        assert_eq!(address(&[0x0f, 0x0b], &fault(&[])), None, "ud2");
    }

    #[test]
    fn only_an_exception_entry_is_a_fault() {
        let mut s = fault(&[]);
        assert!(in_page_fault(&s));
        s.orig_ax = 0; // read(2)
        assert!(!in_page_fault(&s));
        // FRED: a page fault's error code (a write by user mode: 6) in orig_ax, type 3 and vector 14 in ss.
        s.orig_ax = 6;
        s.ss = (3 << 48) | (14 << 32) | 0x2b;
        assert!(in_page_fault(&s));
        s.ss = (7 << 48) | 0x2b; // FRED's system call event
        assert!(!in_page_fault(&s));
        let mut no_regs = fault(&[]);
        no_regs.flags = 0;
        assert!(!in_page_fault(&no_regs), "a sample without registers says nothing");
    }
}
