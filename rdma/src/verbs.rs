//! The [`OneSidedPort`] over libibverbs (`rdma-sys`): cargo feature `rdma`.
//!
//! A thin layer: each method is one verbs call (or a short sequence that
//! belongs together), returning the raw errno; the protocol above decides.
//!
//! 1. [`Device::open`]: find the device sysfs selected in
//!    `ibv_get_device_list` (empty while sysfs lists it: the provider
//!    library is missing), `ibv_open_device`, `ibv_query_port` (must be
//!    ACTIVE: LID, active MTU, link layer), `ibv_query_gid`, `ibv_alloc_pd`.
//! 2. [`Device::endpoint`]: an anonymous mapping for the receive region
//!    (transparent hugepages advised), `ibv_reg_mr` with
//!    `LOCAL_WRITE | REMOTE_WRITE`, one CQ for sends and receives sized
//!    `sq_depth + rq_depth` (it cannot overflow: at most that many
//!    completions are outstanding), an RC QP (`sq_sig_all = 0`: selective
//!    signalling) → INIT, and `ibv_query_qp_data_in_order` for RDMA WRITE.
//! 3. `connect`: the staging region (`LOCAL_WRITE` only), RTR (peer QPN,
//!    PSN, LID or GRH with GID, `traffic_class`, `service_level`, the smaller
//!    MTU, `min_rnr_timer` 12 = 0.64 ms), RTS (`timeout`, `retry_cnt`,
//!    `rnr_retry`, our PSN).
//! 4. [`VerbsPort`]: `post_writes` chains the list into one `ibv_post_send`
//!    (`IBV_WR_RDMA_WRITE[_WITH_IMM]`, `IBV_SEND_INLINE` for inline bytes,
//!    `IBV_SEND_SIGNALED` when asked); `post_receives` chains zero-length
//!    receives; `poll` is `ibv_poll_cq`. Error completions carry no valid
//!    opcode, so receives use a reserved `wr_id`.
//!
//! Verbs objects are used from one thread at a time (the port is `Send`,
//! not `Sync`); libibverbs allows any thread.

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use memmap2::{Advice, MmapMut};
use rdma_sys::*;

use crate::layout;
use crate::link::Visibility;
use crate::nic::{Endpoint, RdmaConfig, SetupError};
use crate::params::ConnParams;
use crate::port::{
    Completion, OneSidedPort, PollError, PortCaps, PostError, SlotCount, Source, WcStatus,
    WriteRequest,
};
use crate::sysfs::{DeviceInfo, Gid, PortInfo};

/// `IBV_LINK_LAYER_ETHERNET` (an anonymous enum in verbs.h, not bound).
const LINK_LAYER_ETHERNET: u8 = 2;
/// `IBV_QUERY_QP_DATA_IN_ORDER_RETURN_CAPS`.
const IN_ORDER_RETURN_CAPS: u32 = 1;
/// `IBV_QUERY_QP_DATA_IN_ORDER_WHOLE_MSG | ..._ALIGNED_128_BYTES`.
const IN_ORDER_CAPS: i32 = 0b11;
/// `wr_id` of every receive (error completions carry no opcode).
const RECV_WR_ID: u64 = u64::MAX;
/// Largest post list the port chains.
const MAX_LIST: usize = 16;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn verbs_err(op: impl Into<String>, errno: i32) -> SetupError {
    SetupError::Verbs {
        op: op.into(),
        errno,
    }
}

/// The IB MTU enum for a byte count.
fn mtu_enum(bytes: u16) -> ibv_mtu::Type {
    match bytes {
        256 => ibv_mtu::IBV_MTU_256,
        512 => ibv_mtu::IBV_MTU_512,
        1024 => ibv_mtu::IBV_MTU_1024,
        2048 => ibv_mtu::IBV_MTU_2048,
        _ => ibv_mtu::IBV_MTU_4096,
    }
}

/// Bytes of an IB MTU enum value.
fn mtu_bytes(mtu: ibv_mtu::Type) -> u16 {
    match mtu {
        ibv_mtu::IBV_MTU_256 => 256,
        ibv_mtu::IBV_MTU_512 => 512,
        ibv_mtu::IBV_MTU_1024 => 1024,
        ibv_mtu::IBV_MTU_2048 => 2048,
        _ => 4096,
    }
}

fn wc_status(s: ibv_wc_status::Type) -> WcStatus {
    match s {
        ibv_wc_status::IBV_WC_SUCCESS => WcStatus::Success,
        ibv_wc_status::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
        ibv_wc_status::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
        ibv_wc_status::IBV_WC_WR_FLUSH_ERR => WcStatus::Flushed,
        ibv_wc_status::IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
        ibv_wc_status::IBV_WC_LOC_PROT_ERR => WcStatus::LocalProtection,
        other => WcStatus::Other(other),
    }
}

/// The opened context and protection domain, shared by every endpoint on it.
#[derive(Debug)]
struct Context {
    ctx: *mut ibv_context,
    pd: *mut ibv_pd,
}

// SAFETY: libibverbs objects may be used from any thread; the pointers are
// only dereferenced by verbs calls, and `Context` is freed once (Drop).
unsafe impl Send for Context {}
// SAFETY: as above; the verbs calls made through `&Context` (create CQ/QP,
// register memory) are thread-safe in libibverbs.
unsafe impl Sync for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: created by `Device::open` and freed only here, after every
        // endpoint and port (which hold an `Arc<Context>`) is gone.
        unsafe {
            ibv_dealloc_pd(self.pd);
            ibv_close_device(self.ctx);
        }
    }
}

/// An open verbs device and the port, GID and settings the endpoints use.
#[derive(Debug)]
pub struct Device {
    ctx: Arc<Context>,
    name: String,
    port: u8,
    gid_index: u8,
    gid: [u8; 16],
    lid: u16,
    active_mtu: ibv_mtu::Type,
    ethernet: bool,
    roce_v2: bool,
}

impl Device {
    /// Opens the device sysfs selected (see the module doc).
    pub fn open(dev: &DeviceInfo, port: &PortInfo, gid: &Gid) -> Result<Device, SetupError> {
        let mut n = 0;
        // SAFETY: `n` is a live out-parameter; the list is freed below.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(SetupError::Library {
                what: format!(
                    "ibv_get_device_list failed ({}) although sysfs lists {}",
                    std::io::Error::from_raw_os_error(errno()),
                    dev.name
                ),
            });
        }
        let mut found = std::ptr::null_mut();
        let mut names = Vec::new();
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: `list` holds `n` valid device pointers.
            let d = unsafe { *list.add(i) };
            // SAFETY: a device of the list has a NUL-terminated name.
            let name = unsafe { CStr::from_ptr(ibv_get_device_name(d)) }
                .to_string_lossy()
                .into_owned();
            if name == dev.name {
                found = d;
            }
            names.push(name);
        }
        // SAFETY: `found` stays valid after this only while the list lives,
        // so the device is opened before the list is freed.
        let ctx = if found.is_null() {
            std::ptr::null_mut()
        } else {
            // SAFETY: `found` is a device of the live list.
            unsafe { ibv_open_device(found) }
        };
        let open_errno = errno();
        // SAFETY: the list came from ibv_get_device_list and is freed once.
        unsafe { ibv_free_device_list(list) };
        if found.is_null() {
            return Err(SetupError::Library {
                what: format!(
                    "no device {} among [{}] although /sys/class/infiniband has it: the provider \
                     library is missing (install rdma-core's ibverbs-providers, e.g. libmlx5)",
                    dev.name,
                    names.join(", ")
                ),
            });
        }
        if ctx.is_null() {
            return Err(verbs_err(
                format!("ibv_open_device({})", dev.name),
                open_errno,
            ));
        }
        // SAFETY: zeroed is a valid ibv_port_attr; `ctx` is open.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is open and `attr` a live out-parameter.
        let rc = unsafe { ___ibv_query_port(ctx, port.number, &mut attr) };
        let fail = |op: String, e: i32| {
            // SAFETY: `ctx` is open and not used after this.
            unsafe { ibv_close_device(ctx) };
            verbs_err(op, e)
        };
        if rc != 0 {
            return Err(fail(
                format!("ibv_query_port({}, {})", dev.name, port.number),
                rc,
            ));
        }
        if attr.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(fail(
                format!(
                    "RDMA port {}/{} is not ACTIVE (ibv_query_port state {})",
                    dev.name, port.number, attr.state
                ),
                libc::ENETDOWN,
            ));
        }
        // SAFETY: zeroed is a valid ibv_gid (plain bytes).
        let mut g: ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is open; `g` is a live out-parameter.
        let rc = unsafe { ibv_query_gid(ctx, port.number, gid.index as i32, &mut g) };
        if rc != 0 {
            return Err(fail(
                format!(
                    "ibv_query_gid({}, {}, {})",
                    dev.name, port.number, gid.index
                ),
                errno(),
            ));
        }
        // SAFETY: `ctx` is open.
        let pd = unsafe { ibv_alloc_pd(ctx) };
        if pd.is_null() {
            return Err(fail(format!("ibv_alloc_pd({})", dev.name), errno()));
        }
        Ok(Device {
            ctx: Arc::new(Context { ctx, pd }),
            name: dev.name.clone(),
            port: port.number,
            gid_index: u8::try_from(gid.index).unwrap_or(0),
            // SAFETY: every bit pattern of the union is 16 valid bytes.
            gid: unsafe { g.raw },
            lid: attr.lid,
            active_mtu: attr.active_mtu,
            ethernet: attr.link_layer == LINK_LAYER_ETHERNET,
            roce_v2: gid.kind == crate::sysfs::GidKind::RoceV2,
        })
    }

    /// `mlx5_0 port 1 gid 3 (RoCE v2), mtu 4096`.
    pub fn describe(&self) -> String {
        format!(
            "{} port {} gid {} ({}), mtu {}",
            self.name,
            self.port,
            self.gid_index,
            if !self.ethernet {
                "InfiniBand"
            } else if self.roce_v2 {
                "RoCE v2"
            } else {
                "RoCE v1"
            },
            mtu_bytes(self.active_mtu)
        )
    }

    /// A queue pair in INIT with its registered receive region (module doc).
    pub fn endpoint(&self, cfg: &RdmaConfig) -> Result<Box<dyn Endpoint>, SetupError> {
        let region = Region::new(&self.ctx, layout::region_len(cfg.recv_ring_bytes), true)?;
        region.write(0, &layout::header_prefix(cfg.recv_ring_bytes));
        let cqe = i32::try_from(cfg.sq_depth + cfg.rq_depth).unwrap_or(i32::MAX);
        // SAFETY: the context is open; no channel or context pointer is passed.
        let cq = unsafe {
            ibv_create_cq(
                self.ctx.ctx,
                cqe,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if cq.is_null() {
            return Err(verbs_err(format!("ibv_create_cq({cqe} entries)"), errno()));
        }
        let cq = Cq(cq);
        // SAFETY: zeroed is valid for the init attributes; fields set below.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.0;
        init.recv_cq = cq.0;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        init.cap = ibv_qp_cap {
            max_send_wr: cfg.sq_depth,
            max_recv_wr: cfg.rq_depth,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: cfg.max_inline,
        };
        // SAFETY: the PD is open; `init` is a live attribute struct.
        let qp = unsafe { ibv_create_qp(self.ctx.pd, &mut init) };
        if qp.is_null() {
            return Err(verbs_err(
                format!(
                    "ibv_create_qp(RC, sq {}, rq {}, max_inline_data {})",
                    cfg.sq_depth, cfg.rq_depth, cfg.max_inline
                ),
                errno(),
            ));
        }
        let qp = Qp(qp);
        // SAFETY: zeroed is valid for the QP attributes; fields set below.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = self.port;
        attr.qp_access_flags = ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE.0
            | ibv_qp_attr_mask::IBV_QP_PKEY_INDEX.0
            | ibv_qp_attr_mask::IBV_QP_PORT.0
            | ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS.0;
        // SAFETY: `qp` is a live QP; `attr` and the mask match.
        let rc = unsafe { ibv_modify_qp(qp.0, &mut attr, mask as i32) };
        if rc != 0 {
            return Err(verbs_err("ibv_modify_qp(INIT)", rc));
        }
        // SAFETY: `qp` is a live QP in INIT.
        let in_order = unsafe {
            ibv_query_qp_data_in_order(qp.0, ibv_wr_opcode::IBV_WR_RDMA_WRITE, IN_ORDER_RETURN_CAPS)
        };
        let data_in_order = in_order > 0 && in_order & IN_ORDER_CAPS != 0;
        let psn = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos())
            ^ u32::from(self.port))
            & 0x00ff_ffff;
        Ok(Box::new(VerbsEndpoint {
            ctx: self.ctx.clone(),
            qp,
            cq,
            region,
            cfg: cfg.clone(),
            caps: init.cap,
            psn,
            data_in_order,
            port: self.port,
            gid_index: self.gid_index,
            gid: self.gid,
            lid: self.lid,
            active_mtu: self.active_mtu,
            global: self.ethernet,
        }))
    }
}

/// A registered anonymous mapping.
#[derive(Debug)]
struct Region {
    // Field order: deregister before unmapping (Drop of `Region` does it).
    mr: *mut ibv_mr,
    map: MmapMut,
}

// SAFETY: the MR pointer is only passed to verbs calls; the mapping is owned.
unsafe impl Send for Region {}

impl Region {
    fn new(ctx: &Context, len: usize, remote_write: bool) -> Result<Region, SetupError> {
        let mut map = MmapMut::map_anon(len).map_err(|source| SetupError::Io {
            op: format!("map {len} bytes for an RDMA region"),
            source,
        })?;
        // Best effort: fewer translation entries for the NIC on large rings.
        let _ = map.advise(Advice::HugePage);
        let mut access = ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
        if remote_write {
            access |= ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        }
        // SAFETY: the PD is open; the mapping is `len` bytes we own and keep
        // mapped until the MR is deregistered (Drop).
        let mr = unsafe { ibv_reg_mr(ctx.pd, map.as_mut_ptr().cast(), len, access as i32) };
        if mr.is_null() {
            return Err(verbs_err(
                format!(
                    "ibv_reg_mr({len} bytes) (memlock limit? `ulimit -l`, docs/deploy-rdma.md)"
                ),
                errno(),
            ));
        }
        Ok(Region { mr, map })
    }

    fn addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    fn lkey(&self) -> u32 {
        // SAFETY: `mr` is a live registration.
        unsafe { (*self.mr).lkey }
    }

    fn rkey(&self) -> u32 {
        // SAFETY: `mr` is a live registration.
        unsafe { (*self.mr).rkey }
    }

    fn write(&self, offset: usize, src: &[u8]) {
        assert!(
            offset + src.len() <= self.map.len(),
            "write {offset}+{} of {}",
            src.len(),
            self.map.len()
        );
        // SAFETY: in bounds (asserted); the bytes are ours (staging) or a
        // header prefix written before the peer knows the region.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.map.as_ptr().cast_mut().add(offset),
                src.len(),
            )
        };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: registered in `Region::new`, deregistered once, before the
        // mapping (a field) is unmapped.
        unsafe { ibv_dereg_mr(self.mr) };
    }
}

/// A completion queue, destroyed on drop (after the QP: field order).
#[derive(Debug)]
struct Cq(*mut ibv_cq);
// SAFETY: only passed to verbs calls, from one thread at a time.
unsafe impl Send for Cq {}
impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_cq; its QP is destroyed first.
        unsafe { ibv_destroy_cq(self.0) };
    }
}

/// A queue pair, destroyed on drop.
#[derive(Debug)]
struct Qp(*mut ibv_qp);
// SAFETY: only passed to verbs calls, from one thread at a time.
unsafe impl Send for Qp {}
impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_qp, destroyed once.
        unsafe { ibv_destroy_qp(self.0) };
    }
}

struct VerbsEndpoint {
    // Drop order: QP, CQ, regions, then the context (last, by Arc).
    qp: Qp,
    cq: Cq,
    region: Region,
    ctx: Arc<Context>,
    cfg: RdmaConfig,
    caps: ibv_qp_cap,
    psn: u32,
    data_in_order: bool,
    port: u8,
    gid_index: u8,
    gid: [u8; 16],
    lid: u16,
    active_mtu: ibv_mtu::Type,
    global: bool,
}

impl Endpoint for VerbsEndpoint {
    fn params(&self) -> ConnParams {
        let trailer = self.cfg.visibility == Visibility::Trailer && self.data_in_order;
        ConnParams {
            visibility: if trailer {
                Visibility::Trailer
            } else {
                Visibility::Immediate
            },
            simulated: false,
            // SAFETY: `qp` is a live QP.
            qpn: unsafe { (*self.qp.0).qp_num },
            psn: self.psn,
            lid: self.lid,
            mtu: mtu_bytes(self.active_mtu),
            gid: self.gid,
            rkey: self.region.rkey(),
            rq_depth: self.caps.max_recv_wr,
            region_addr: self.region.addr(),
            region_len: self.region.map.len() as u64,
            capacity: self.cfg.recv_ring_bytes as u64,
        }
    }

    fn connect(self: Box<Self>, peer: &ConnParams) -> Result<Box<dyn OneSidedPort>, SetupError> {
        let staging = Region::new(&self.ctx, peer.capacity as usize, false)?;
        // SAFETY: zeroed is valid for the QP attributes; fields set below.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = mtu_enum(peer.mtu.min(mtu_bytes(self.active_mtu)));
        attr.dest_qp_num = peer.qpn;
        attr.rq_psn = peer.psn;
        attr.max_dest_rd_atomic = 1;
        attr.min_rnr_timer = 12;
        attr.ah_attr.dlid = peer.lid;
        attr.ah_attr.sl = self.cfg.service_level;
        attr.ah_attr.port_num = self.port;
        if self.global || peer.gid != [0; 16] && peer.lid == 0 {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid = ibv_gid { raw: peer.gid };
            attr.ah_attr.grh.sgid_index = self.gid_index;
            attr.ah_attr.grh.hop_limit = 64;
            attr.ah_attr.grh.traffic_class = self.cfg.traffic_class;
        }
        let mask = ibv_qp_attr_mask::IBV_QP_STATE.0
            | ibv_qp_attr_mask::IBV_QP_AV.0
            | ibv_qp_attr_mask::IBV_QP_PATH_MTU.0
            | ibv_qp_attr_mask::IBV_QP_DEST_QPN.0
            | ibv_qp_attr_mask::IBV_QP_RQ_PSN.0
            | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC.0
            | ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0;
        // SAFETY: a live QP in INIT; `attr` and the mask match.
        let rc = unsafe { ibv_modify_qp(self.qp.0, &mut attr, mask as i32) };
        if rc != 0 {
            return Err(verbs_err(
                format!(
                    "ibv_modify_qp(RTR, peer qpn {:#x}, mtu {})",
                    peer.qpn, peer.mtu
                ),
                rc,
            ));
        }
        // SAFETY: as above.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_RTS;
        attr.timeout = self.cfg.ack_timeout;
        attr.retry_cnt = self.cfg.retry_count;
        attr.rnr_retry = self.cfg.rnr_retry;
        attr.sq_psn = self.psn;
        attr.max_rd_atomic = 1;
        let mask = ibv_qp_attr_mask::IBV_QP_STATE.0
            | ibv_qp_attr_mask::IBV_QP_TIMEOUT.0
            | ibv_qp_attr_mask::IBV_QP_RETRY_CNT.0
            | ibv_qp_attr_mask::IBV_QP_RNR_RETRY.0
            | ibv_qp_attr_mask::IBV_QP_SQ_PSN.0
            | ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC.0;
        // SAFETY: a live QP in RTR; `attr` and the mask match.
        let rc = unsafe { ibv_modify_qp(self.qp.0, &mut attr, mask as i32) };
        if rc != 0 {
            return Err(verbs_err(
                format!(
                    "ibv_modify_qp(RTS, timeout {}, retry_cnt {}, rnr_retry {})",
                    self.cfg.ack_timeout, self.cfg.retry_count, self.cfg.rnr_retry
                ),
                rc,
            ));
        }
        let caps = PortCaps {
            sq_depth: self.caps.max_send_wr.min(self.cfg.sq_depth),
            rq_depth: self.caps.max_recv_wr.min(self.cfg.rq_depth),
            max_inline: self.caps.max_inline_data as usize,
            local_region_len: self.region.map.len(),
            staging_len: staging.map.len(),
            remote_region_len: peer.region_len as usize,
            data_in_order: self.data_in_order,
        };
        let e = *self;
        Ok(Box::new(VerbsPort {
            qp: e.qp,
            cq: e.cq,
            region: e.region,
            staging,
            _ctx: e.ctx,
            remote_addr: peer.region_addr,
            rkey: peer.rkey,
            caps,
            slots: SlotCount::default(),
            wr_ids: std::collections::VecDeque::new(),
        }))
    }
}

/// A connected verbs queue pair.
#[derive(Debug)]
pub struct VerbsPort {
    // Drop order: QP, CQ, regions, context.
    qp: Qp,
    cq: Cq,
    region: Region,
    staging: Region,
    _ctx: Arc<Context>,
    remote_addr: u64,
    rkey: u32,
    caps: PortCaps,
    slots: SlotCount,
    /// Caller `wr_id`s of posted sends, oldest first (the ibv `wr_id` is the ordinal).
    wr_ids: std::collections::VecDeque<u64>,
}

impl OneSidedPort for VerbsPort {
    fn caps(&self) -> PortCaps {
        self.caps
    }

    fn post_writes(&mut self, wrs: &[WriteRequest<'_>]) -> Result<(), PostError> {
        if wrs.is_empty() {
            return Ok(());
        }
        assert!(
            wrs.len() <= MAX_LIST,
            "post list of {} > {MAX_LIST}",
            wrs.len()
        );
        for wr in wrs {
            match wr.source {
                Source::Inline(b) if b.len() > self.caps.max_inline => {
                    return Err(PostError::InlineTooLong {
                        len: b.len(),
                        max: self.caps.max_inline,
                    });
                }
                Source::Staging { offset, len }
                    if offset
                        .checked_add(len)
                        .is_none_or(|e| e > self.caps.staging_len) =>
                {
                    return Err(PostError::BadStaging {
                        offset,
                        len,
                        region: self.caps.staging_len,
                    });
                }
                _ => {}
            }
        }
        let first = self.slots.reserve(wrs.len(), self.caps.sq_depth)?;
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut sges: [ibv_sge; MAX_LIST] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut list: [ibv_send_wr; MAX_LIST] = unsafe { std::mem::zeroed() };
        let n = wrs.len();
        for (i, wr) in wrs.iter().enumerate() {
            let (addr, len, lkey, inline) = match wr.source {
                Source::Inline(b) => (b.as_ptr() as u64, b.len(), 0, true),
                Source::Staging { offset, len } => (
                    self.staging.addr() + offset as u64,
                    len,
                    self.staging.lkey(),
                    false,
                ),
            };
            sges[i] = ibv_sge {
                addr,
                length: len as u32,
                lkey,
            };
            let w = &mut list[i];
            w.wr_id = first + i as u64;
            w.num_sge = i32::from(len > 0);
            w.opcode = if wr.imm.is_some() {
                ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM
            } else {
                ibv_wr_opcode::IBV_WR_RDMA_WRITE
            };
            let mut flags = 0;
            if wr.signaled {
                flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if inline && len > 0 {
                flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
            w.send_flags = flags;
            w.imm_data_invalidated_rkey_union.imm_data = wr.imm.unwrap_or(0).to_be();
            w.wr.rdma = rdma_t {
                remote_addr: self.remote_addr + wr.remote_offset as u64,
                rkey: self.rkey,
            };
        }
        for i in 0..n {
            list[i].sg_list = &raw mut sges[i];
            if i + 1 < n {
                list[i].next = &raw mut list[i + 1];
            }
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: `list[..n]` is a chained list of initialised work requests
        // whose SGEs point into `sges` (alive during the call) at inline bytes
        // (copied by the call) or into the registered staging region; the QP
        // is live.
        let rc = unsafe { ibv_post_send(self.qp.0, list.as_mut_ptr(), &mut bad) };
        if rc != 0 {
            return Err(PostError::Os {
                op: "ibv_post_send",
                errno: rc,
            });
        }
        self.wr_ids.extend(wrs.iter().map(|w| w.wr_id));
        Ok(())
    }

    fn post_receives(&mut self, count: u32) -> Result<(), PostError> {
        let mut left = count as usize;
        while left > 0 {
            let n = left.min(MAX_LIST);
            // SAFETY: all-zero is valid for ibv_recv_wr.
            let mut list: [ibv_recv_wr; MAX_LIST] = unsafe { std::mem::zeroed() };
            for w in list.iter_mut().take(n) {
                w.wr_id = RECV_WR_ID;
                w.num_sge = 0;
            }
            for i in 0..n.saturating_sub(1) {
                list[i].next = &raw mut list[i + 1];
            }
            let mut bad = std::ptr::null_mut();
            // SAFETY: a chained list of `n` zero-length receives; the QP is live.
            let rc = unsafe { ibv_post_recv(self.qp.0, list.as_mut_ptr(), &mut bad) };
            if rc != 0 {
                return Err(PostError::Os {
                    op: "ibv_post_recv",
                    errno: rc,
                });
            }
            left -= n;
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, PollError> {
        const BATCH: usize = 32;
        // SAFETY: all-zero is valid for ibv_wc.
        let mut wc: [ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let want = max.min(BATCH) as i32;
        // SAFETY: `wc` has room for `want` entries; the CQ is live.
        let n = unsafe { ibv_poll_cq(self.cq.0, want, wc.as_mut_ptr()) };
        if n < 0 {
            return Err(PollError { rc: n });
        }
        for w in &wc[..n as usize] {
            let status = wc_status(w.status);
            if w.wr_id == RECV_WR_ID {
                let imm = (status == WcStatus::Success
                    && w.opcode == ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM)
                    // SAFETY: a successful RECV_RDMA_WITH_IMM carries the immediate.
                    .then(|| u32::from_be(unsafe { w.imm_data_invalidated_rkey_union.imm_data }));
                out.push(Completion::Recv { imm, status });
            } else {
                let ordinal = w.wr_id;
                let index = ordinal.saturating_sub(self.slots.freed) as usize;
                let wr_id = self.wr_ids.get(index).copied().unwrap_or(ordinal);
                self.wr_ids
                    .drain(..=index.min(self.wr_ids.len().saturating_sub(1)));
                self.slots.complete(ordinal);
                out.push(Completion::Send { wr_id, status });
            }
        }
        Ok(n as usize)
    }

    fn write_staging(&mut self, offset: usize, src: &[u8]) {
        self.staging.write(offset, src);
    }

    fn read_local(&self, offset: usize, dst: &mut [u8]) {
        let len = self.region.map.len();
        assert!(
            offset + dst.len() <= len,
            "read {offset}+{} of {len}",
            dst.len()
        );
        // Acquire: orders these loads after the completion (or trailer
        // load) that announced the bytes; pairs with the provider's barrier
        // after the NIC's DMA and CQE write.
        fence(Ordering::Acquire);
        // SAFETY: in bounds (asserted); the NIC wrote these bytes before the
        // completion or trailer that announced them and writes them no more.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.region.map.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
    }

    fn load_local_u64(&self, offset: usize) -> u64 {
        assert!(
            offset.is_multiple_of(8) && offset + 8 <= self.region.map.len(),
            "u64 at {offset}"
        );
        // SAFETY: aligned (page-aligned mapping, offset checked) and in
        // bounds; any bit pattern is a valid AtomicU64; the NIC stores whole
        // aligned words (a torn credit is caught by its check word).
        let word = unsafe { &*self.region.map.as_ptr().add(offset).cast::<AtomicU64>() };
        // Acquire: pairs with the NIC's placement of the word (the data it
        // covers was placed before it, in-order mode).
        word.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_and_status_mapping() {
        for b in [256, 512, 1024, 2048, 4096] {
            assert_eq!(mtu_bytes(mtu_enum(b)), b);
        }
        assert_eq!(
            wc_status(ibv_wc_status::IBV_WC_RETRY_EXC_ERR),
            WcStatus::RetryExceeded
        );
        assert_eq!(
            wc_status(ibv_wc_status::IBV_WC_WR_FLUSH_ERR),
            WcStatus::Flushed
        );
        assert_eq!(wc_status(ibv_wc_status::IBV_WC_SUCCESS), WcStatus::Success);
    }
}
