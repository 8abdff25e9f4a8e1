//! Direct boot of an ELF `vmlinux` through its PVH entry point: kernel,
//! initramfs, command line, memory map and the boot GDT in guest memory.

pub(crate) use sbxrun_proto::cmdline;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_START_MAGIC_VALUE,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::vstate::vcpu::{gdt_descriptor, BOOT_GDT};
use sbxrun_proto::layout::*;

/// Errors loading the guest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BootError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the kernel {path}")]
    LoadKernel {
        path: String,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("the kernel {0} has no PVH entry point (build it with CONFIG_PVH=y)")]
    NoPvhEntry(String),
    #[error("the initramfs {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitramfsTooLarge { path: String, size: u64 },
    #[error("cannot read the initramfs {path}")]
    ReadInitramfs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot write boot structures into guest memory")]
    WriteBootInfo(#[source] linux_loader::configurator::Error),
    #[error("cannot write the boot GDT into guest memory")]
    WriteGdt(#[source] vm_memory::GuestMemoryError),
}

/// Loads kernel and initramfs and writes the PVH boot structures.
/// Returns the PVH entry address.
pub(crate) fn load_pvh(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
) -> Result<GuestAddress, BootError> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| BootError::Open {
            path: path.display().to_string(),
            source,
        })
    };
    let mut kernel_file = open(kernel)?;
    let loaded = Elf::load(mem, None, &mut kernel_file, Some(GuestAddress(HIMEM_START))).map_err(
        |source| BootError::LoadKernel {
            path: kernel.display().to_string(),
            source,
        },
    )?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr,
        _ => return Err(BootError::NoPvhEntry(kernel.display().to_string())),
    };

    let (initrd_addr, initrd_size) = load_initramfs(mem, initramfs, loaded.kernel_end)?;

    let mut cl = Cmdline::new(CMDLINE_MAX_LEN).map_err(BootError::Cmdline)?;
    cl.insert_str(cmdline).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(BootError::WriteCmdline)?;

    write_gdt(mem)?;
    write_start_info(mem, initrd_addr, initrd_size)?;
    Ok(entry)
}

/// Puts the initramfs page-aligned at the top of RAM, where the kernel's
/// early allocations will not collide with it.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::Open {
        path: display.clone(),
        source,
    })?;
    let size = file
        .seek(SeekFrom::End(0))
        .map_err(|source| BootError::ReadInitramfs {
            path: display.clone(),
            source,
        })?;
    file.rewind().map_err(|source| BootError::ReadInitramfs {
        path: display.clone(),
        source,
    })?;
    let ram_end = mem.last_addr().raw_value() + 1;
    let too_large = || BootError::InitramfsTooLarge {
        path: display.clone(),
        size,
    };
    let start = ram_end.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if start < kernel_end {
        return Err(too_large());
    }
    let addr = GuestAddress(start);
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(addr, &mut file, len)
        .map_err(|e| BootError::ReadInitramfs {
            path: display.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}

fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        let addr = GuestAddress(BOOT_GDT_START + (i as u64) * 8);
        mem.write_obj(gdt_descriptor(*entry), addr)
            .map_err(BootError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(BootError::WriteGdt)
}

fn write_start_info(
    mem: &GuestMemoryMmap,
    initrd: GuestAddress,
    initrd_size: u64,
) -> Result<(), BootError> {
    let ram_end = mem.last_addr().raw_value() + 1;
    let memmap = [
        hvm_memmap_table_entry {
            addr: 0,
            size: EBDA_START,
            type_: XEN_HVM_MEMMAP_TYPE_RAM,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: HIMEM_START,
            size: ram_end - HIMEM_START,
            type_: XEN_HVM_MEMMAP_TYPE_RAM,
            reserved: 0,
        },
    ];
    let modules = [hvm_modlist_entry {
        paddr: initrd.raw_value(),
        size: initrd_size,
        ..Default::default()
    }];
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: PVH_MODLIST_START,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::WriteBootInfo)
}
