//! A small reader for BTF blobs: vmlinux's and a module's split BTF on top of it, enough to find
//! the byte offset and size of a (possibly nested, possibly anonymous) struct member.
//!
//! Why our own and not a crate: aya-obj's `Btf` parses one blob and has no notion of split BTF;
//! btf-rs (what retis uses) handles split BTF but is LGPL-2.1, which does not fit this
//! MIT/Apache project's static binary. What we need is ~200 lines: the header, the type
//! records' layout (to walk to type N) and struct/union members
//! (Documentation/bpf/btf.rst, include/uapi/linux/btf.h).
//!
//! Split BTF (a module's /sys/kernel/btf/<module>) continues its base: its first type id is the
//! base's type count, and its string offsets start at the base's string section length.

use std::ops::Range;

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("malformed BTF ({what})")]
    Malformed { what: String },
    #[error("BTF has no struct {name}")]
    NoStruct { name: String },
    #[error("BTF struct {ty} has no member {path}")]
    NoMember { ty: String, path: String },
    #[error("BTF {ty}.{path} is a bit field")]
    BitField { ty: String, path: String },
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed { what: what.into() }
}

/// One parsed blob: where each type record starts, and the string section.
struct Blob {
    data: Vec<u8>,
    /// Byte offset of each type record in `data`, in type-id order.
    types: Vec<usize>,
    strings: Range<usize>,
}

fn u16_at(d: &[u8], off: usize) -> Result<u16, BtfError> {
    d.get(off..off + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_le_bytes)
        .ok_or_else(|| malformed(format!("read past the end at {off}")))
}

fn u32_at(d: &[u8], off: usize) -> Result<u32, BtfError> {
    d.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| malformed(format!("read past the end at {off}")))
}

impl Blob {
    fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let magic = u16_at(&data, 0)?;
        if magic != BTF_MAGIC {
            return Err(malformed(format!(
                "magic {magic:#06x}, want {BTF_MAGIC:#06x} (only little-endian BTF is read)"
            )));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types_end > data.len() || strings.end > data.len() {
            return Err(malformed("sections past the end of the blob"));
        }
        let mut types = Vec::new();
        let mut off = types_start;
        while off < types_end {
            types.push(off);
            let info = u32_at(&data, off + 4)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                k => return Err(malformed(format!("unknown type kind {k} at {off}"))),
            };
            off += 12 + extra;
        }
        if off != types_end {
            return Err(malformed("type section does not end on a record"));
        }
        Ok(Self {
            data,
            types,
            strings,
        })
    }
}

/// Base BTF (vmlinux) plus, optionally, one module's split BTF on top of it.
pub struct Btf {
    base: Blob,
    split: Option<Blob>,
    /// Struct name -> type id, of the structs already looked up: finding one scans the types,
    /// and the probes' offsets ask for the same few structs many times (sk_buff, deep in
    /// vmlinux, four times).
    found: std::cell::RefCell<std::collections::HashMap<String, u32>>,
}

/// A member found by [`Btf::member`]: byte offset from the start of the outer struct, and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

struct Type<'a> {
    d: &'a [u8],
    off: usize,
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// `size` or `type`, depending on the kind.
    size_type: u32,
}

impl Btf {
    pub fn parse(base: Vec<u8>) -> Result<Self, BtfError> {
        Ok(Self {
            base: Blob::parse(base)?,
            split: None,
            found: Default::default(),
        })
    }

    pub fn parse_split(base: Vec<u8>, split: Vec<u8>) -> Result<Self, BtfError> {
        Ok(Self {
            base: Blob::parse(base)?,
            split: Some(Blob::parse(split)?),
            found: Default::default(),
        })
    }

    /// Number of type ids in the base, counting void (id 0).
    fn base_count(&self) -> usize {
        self.base.types.len() + 1
    }

    fn ty(&self, id: u32) -> Result<Type<'_>, BtfError> {
        let id = id as usize;
        let (blob, idx) = if id < self.base_count() {
            (&self.base, id.checked_sub(1))
        } else {
            match &self.split {
                Some(s) => (s, Some(id - self.base_count())),
                None => (&self.base, None),
            }
        };
        let off = idx
            .and_then(|i| blob.types.get(i).copied())
            .ok_or_else(|| malformed(format!("type id {id} out of range")))?;
        let info = u32_at(&blob.data, off + 4)?;
        Ok(Type {
            d: &blob.data,
            off,
            name_off: u32_at(&blob.data, off)?,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 != 0,
            vlen: (info & 0xffff) as usize,
            size_type: u32_at(&blob.data, off + 8)?,
        })
    }

    fn name(&self, off: u32) -> Result<&[u8], BtfError> {
        let off = off as usize;
        let base_len = self.base.strings.len();
        let (blob, off) = match &self.split {
            Some(s) if off >= base_len => (s, off - base_len),
            _ => (&self.base, off),
        };
        let s = blob
            .data
            .get(blob.strings.start + off..blob.strings.end)
            .ok_or_else(|| malformed(format!("string offset {off} out of range")))?;
        Ok(s.split(|&b| b == 0).next().unwrap_or_default())
    }

    /// Type id of the struct named `name`, looked up in the split BTF first.
    fn find_struct(&self, name: &str) -> Result<u32, BtfError> {
        if let Some(&id) = self.found.borrow().get(name) {
            return Ok(id);
        }
        let id = self.scan_struct(name)?;
        self.found.borrow_mut().insert(name.to_string(), id);
        Ok(id)
    }

    fn scan_struct(&self, name: &str) -> Result<u32, BtfError> {
        let base_count = self.base_count();
        let split_ids = self
            .split
            .as_ref()
            .map(|s| (base_count..base_count + s.types.len()).collect::<Vec<_>>())
            .unwrap_or_default();
        for id in split_ids.into_iter().chain(1..base_count) {
            let t = self.ty(id as u32)?;
            if t.kind == KIND_STRUCT && self.name(t.name_off)? == name.as_bytes() {
                return Ok(id as u32);
            }
        }
        Err(BtfError::NoStruct {
            name: name.to_string(),
        })
    }

    /// Follows typedefs and qualifiers to the type that has a layout.
    fn resolve(&self, mut id: u32) -> Result<Type<'_>, BtfError> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_type;
                }
                _ => return Ok(t),
            }
        }
        Err(malformed(format!("type chain too long at id {id}")))
    }

    /// Size in bytes of type `id`. Arrays of arrays are walked in a loop with a bound, so a
    /// malformed blob whose array is its own element type is an error, not a stack overflow.
    fn size_of(&self, mut id: u32) -> Result<u32, BtfError> {
        let mut count: u32 = 1;
        for _ in 0..32 {
            let t = self.resolve(id)?;
            let size = match t.kind {
                KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                    t.size_type
                }
                KIND_PTR => 8,
                KIND_ARRAY => {
                    id = u32_at(t.d, t.off + 12)?;
                    count = count.saturating_mul(u32_at(t.d, t.off + 20)?);
                    continue;
                }
                k => return Err(malformed(format!("no size for a type of kind {k}"))),
            };
            return Ok(size.saturating_mul(count));
        }
        Err(malformed(format!("array chain too long at id {id}")))
    }

    /// Finds `name` among the members of struct/union `id`, looking inside anonymous members.
    /// Returns (bit offset, member type id, whether it is a bit field).
    fn find_in(&self, id: u32, name: &str, depth: u32) -> Result<Option<(u32, u32)>, BtfError> {
        let t = self.resolve(id)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return Ok(None);
        }
        for i in 0..t.vlen {
            let m = t.off + 12 + 12 * i;
            let m_name = u32_at(t.d, m)?;
            let m_type = u32_at(t.d, m + 4)?;
            let raw = u32_at(t.d, m + 8)?;
            // With kind_flag, the offset word is bitfield_size << 24 | bit_offset.
            let (bit_off, bits) = if t.kind_flag {
                (raw & 0xff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if bits != 0 {
                if self.name(m_name)? == name.as_bytes() {
                    return Ok(Some((u32::MAX, m_type)));
                }
                continue;
            }
            let m_name = self.name(m_name)?;
            if m_name == name.as_bytes() {
                return Ok(Some((bit_off, m_type)));
            }
            if m_name.is_empty()
                && let Some((inner, ty)) = self.find_in(m_type, name, depth + 1)?
            {
                // u32::MAX marks a bit field found inside: kept as the marker.
                let off = if inner == u32::MAX {
                    Some(inner)
                } else {
                    inner.checked_add(bit_off).filter(|&o| o != u32::MAX)
                }
                .ok_or_else(|| malformed(format!("member {name} offset overflows")))?;
                return Ok(Some((off, ty)));
            }
        }
        Ok(None)
    }

    /// Type id of the function named `name` in the split (module) BTF: the target id an fentry
    /// program on that module function is loaded with.
    pub fn split_func(&self, name: &str) -> Result<Option<u32>, BtfError> {
        let Some(split) = &self.split else {
            return Ok(None);
        };
        let base_count = self.base_count();
        for id in base_count..base_count + split.types.len() {
            let t = self.ty(id as u32)?;
            if t.kind == KIND_FUNC && self.name(t.name_off)? == name.as_bytes() {
                return Ok(Some(id as u32));
            }
        }
        Ok(None)
    }

    /// Whether the split (module) BTF has an enum named `name`.
    pub fn split_enum(&self, name: &str) -> Result<bool, BtfError> {
        let Some(split) = &self.split else {
            return Ok(false);
        };
        let base_count = self.base_count();
        for id in base_count..base_count + split.types.len() {
            let t = self.ty(id as u32)?;
            if matches!(t.kind, KIND_ENUM | KIND_ENUM64)
                && self.name(t.name_off)? == name.as_bytes()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Byte offset and size of `path` (dot-separated, e.g. `ipv4.addr.src`) in struct `ty`.
    /// Anonymous structs and unions on the way are looked through, as C does.
    pub fn member(&self, ty: &str, path: &str) -> Result<Member, BtfError> {
        let no_member = || BtfError::NoMember {
            ty: ty.to_string(),
            path: path.to_string(),
        };
        let mut id = self.find_struct(ty)?;
        let mut bits: u32 = 0;
        for part in path.split('.') {
            let (off, m_type) = self.find_in(id, part, 0)?.ok_or_else(no_member)?;
            if off == u32::MAX || off % 8 != 0 {
                return Err(BtfError::BitField {
                    ty: ty.to_string(),
                    path: path.to_string(),
                });
            }
            bits = bits
                .checked_add(off)
                .ok_or_else(|| malformed(format!("{ty}.{path} offset overflows")))?;
            id = m_type;
        }
        Ok(Member {
            offset: bits / 8,
            size: self.size_of(id)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/btf");

    /// vmlinux and openvswitch.ko BTF of Debian trixie's 6.12.117 kernel (the lab's).
    fn lab_btf() -> Btf {
        let read = |name: &str| {
            std::fs::read(format!("{FIXTURES}/{name}"))
                .unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
        };
        let mut vmlinux = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&read("vmlinux-6.12.117.btf.zst")[..])
            .expect("zstd frame")
            .read_to_end(&mut vmlinux)
            .expect("decompressing vmlinux BTF");
        Btf::parse_split(vmlinux, read("openvswitch-6.12.117.btf")).expect("parsing lab BTF")
    }

    /// Every hook of both counting modes has its function in the lab kernel's module BTF (an
    /// fentry target), the removal probe's RCU callback included.
    #[test]
    fn lab_kernel_has_every_hook() {
        let btf = lab_btf();
        let hooks = super::super::hooks::HOOKS
            .iter()
            .chain(super::super::hooks::FLOW_TABLE_HOOKS);
        for h in hooks {
            assert!(
                btf.split_func(h.function).ok().flatten().is_some(),
                "{} not in the module BTF",
                h.function
            );
        }
    }

    /// 6.12 has OVS drop reasons (net/openvswitch/drop.h): the probes leave drops to
    /// skb:kfree_skb there (6.1's module has no such enum: probes/config.rs).
    #[test]
    fn lab_kernel_has_ovs_drop_reasons() {
        let btf = lab_btf();
        assert_eq!(btf.split_enum("ovs_drop_reason").ok(), Some(true));
        assert_eq!(btf.split_enum("no_such_enum").ok(), Some(false));
        // vmlinux's own enums are not the module's.
        assert_eq!(btf.split_enum("skb_drop_reason").ok(), Some(false));
    }

    #[test]
    fn lab_kernel_offsets() {
        let btf = lab_btf();
        let m = |t: &str, p: &str| btf.member(t, p).expect(p);
        // struct sw_flow_id { u32 ufid_len; union { u32 ufid[4]; struct sw_flow_key
        // *unmasked_key; }; }: the union holds a pointer, so ufid sits at 8, not 4.
        assert_eq!(
            m("sw_flow", "id"),
            Member {
                offset: 576,
                size: 24
            }
        );
        assert_eq!(m("sw_flow_id", "ufid_len"), Member { offset: 0, size: 4 });
        assert_eq!(
            m("sw_flow_id", "ufid"),
            Member {
                offset: 8,
                size: 16
            }
        );
        assert_eq!(m("sw_flow_key", "phy.in_port").size, 2);
        assert_eq!(m("sw_flow_key", "recirc_id").size, 4);
        assert_eq!(m("sw_flow_key", "eth.type").size, 2);
        assert_eq!(m("sw_flow_key", "ip.proto").size, 1);
        assert_eq!(m("sw_flow_key", "tp.src").size, 2);
        assert_eq!(
            m("sw_flow_key", "tp.dst").offset,
            m("sw_flow_key", "tp.src").offset + 2
        );
        let v4 = m("sw_flow_key", "ipv4.addr.src");
        assert_eq!(v4.size, 4);
        assert_eq!(m("sw_flow_key", "ipv4.addr.dst").offset, v4.offset + 4);
        // ipv4 and ipv6 share an anonymous union.
        let v6 = m("sw_flow_key", "ipv6.addr.src");
        assert_eq!((v6.offset, v6.size), (v4.offset, 16));
        assert_eq!(m("sw_flow_key", "ipv6.addr.dst").offset, v6.offset + 16);
        assert_eq!(m("sk_buff", "len").size, 4);
        assert_eq!(m("vport", "port_no").size, 2);
        assert_eq!(m("dp_upcall_info", "cmd").size, 1);
        // Cross-checked by hand against 6.12's net/openvswitch/flow.h layout (phy at 320,
        // mac_proto/tun_proto/ovs_flow_hash, eth at 340, ...) and include/linux/skbuff.h.
        let offsets: Vec<u32> = [
            ("sw_flow_key", "phy.in_port"),
            ("sw_flow_key", "recirc_id"),
            ("sw_flow_key", "eth.type"),
            ("sw_flow_key", "ip.proto"),
            ("sw_flow_key", "tp.src"),
            ("sw_flow_key", "ipv4.addr.src"),
            ("sk_buff", "len"),
            ("vport", "port_no"),
            ("dp_upcall_info", "cmd"),
        ]
        .iter()
        .map(|(t, p)| m(t, p).offset)
        .collect();
        assert_eq!(offsets, [328, 336, 360, 364, 370, 376, 112, 24, 32]);
    }

    #[test]
    fn module_functions_for_fentry() {
        let btf = lab_btf();
        let ids: Vec<u32> = ["ovs_flow_stats_update", "ovs_dp_upcall", "ovs_vport_send"]
            .iter()
            .map(|f| btf.split_func(f).expect("parse").expect(f))
            .collect();
        // Ids in the split numbering (after vmlinux's), distinct, and each a FUNC of that name.
        for (id, f) in ids
            .iter()
            .zip(["ovs_flow_stats_update", "ovs_dp_upcall", "ovs_vport_send"])
        {
            assert!(*id as usize >= btf.base_count(), "{f}: {id}");
            let t = btf.ty(*id).expect("type");
            assert_eq!(t.kind, KIND_FUNC);
            assert_eq!(btf.name(t.name_off).expect("name"), f.as_bytes());
        }
        assert_eq!(btf.split_func("no_such_function").expect("parse"), None);
        // A vmlinux function is not the module's.
        assert_eq!(btf.split_func("kfree_skb").expect("parse"), None);
    }

    #[test]
    fn missing_things_are_named() {
        let btf = lab_btf();
        assert!(matches!(
            btf.member("no_such_struct", "x"),
            Err(BtfError::NoStruct { .. })
        ));
        let e = btf.member("sw_flow_key", "ipv4.addr.nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            "BTF struct sw_flow_key has no member ipv4.addr.nope"
        );
        // A base-only parse cannot see the module's structs.
        let mut vmlinux = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(
            &std::fs::read(format!("{FIXTURES}/vmlinux-6.12.117.btf.zst")).expect("fixture")[..],
        )
        .expect("zstd")
        .read_to_end(&mut vmlinux)
        .expect("zstd");
        let base = Btf::parse(vmlinux).expect("vmlinux");
        assert!(base.member("sw_flow", "id").is_err());
        assert!(base.member("sk_buff", "len").is_ok());
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            Btf::parse(vec![0; 64]),
            Err(BtfError::Malformed { .. })
        ));
        assert!(matches!(
            Btf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0]),
            Err(BtfError::Malformed { .. })
        ));
    }

    /// A member path whose bit offsets add past u32 is malformed BTF, not an overflow panic
    /// (found by the btf fuzz target in CI): the lab module's anonymous union holding
    /// sw_flow_key.ipv4 moved to bit 0xffff_fff0, so adding addr.dst's 32 bits overflows.
    #[test]
    fn member_offsets_that_overflow_are_malformed() {
        let read = |name: &str| std::fs::read(format!("{FIXTURES}/{name}")).expect(name);
        let mut vmlinux = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&read("vmlinux-6.12.117.btf.zst")[..])
            .expect("zstd frame")
            .read_to_end(&mut vmlinux)
            .expect("decompressing vmlinux BTF");
        let mut module = read("openvswitch-6.12.117.btf");
        let btf = Btf::parse_split(vmlinux.clone(), module.clone()).expect("lab BTF");
        let key = btf.find_struct("sw_flow_key").expect("sw_flow_key");
        let t = btf.ty(key).expect("type");
        assert!(!t.kind_flag, "sw_flow_key has plain offsets");
        let union = (0..t.vlen)
            .map(|i| t.off + 12 + 12 * i)
            .find(|&m| {
                btf.name(u32_at(t.d, m).unwrap()).unwrap().is_empty()
                    && btf
                        .find_in(u32_at(t.d, m + 4).unwrap(), "ipv4", 0)
                        .unwrap()
                        .is_some()
            })
            .expect("the anonymous union holding ipv4");
        module[union + 8..union + 12].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let patched = Btf::parse_split(vmlinux, module).expect("patched BTF");
        let e = patched.member("sw_flow_key", "ipv4.addr.dst").unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed BTF (sw_flow_key.ipv4.addr.dst offset overflows)"
        );
        // The path up to the overflow still reads.
        assert_eq!(
            patched
                .member("sw_flow_key", "ipv4.addr.src")
                .map(|m| m.offset)
                .ok(),
            Some(0xffff_fff0 / 8)
        );
    }

    /// Inputs the btf fuzz target crashed on (kept in tests/fixtures/fuzz/btf/): arrays that
    /// are their own element type, through typedefs (unbounded recursion in `size_of`, a
    /// stack overflow). Both are now malformed BTF.
    #[test]
    fn fuzz_crashes_are_malformed() {
        for (file, path) in [
            ("crash-629455b6385d5f3dd3727d1675719e2504ff5332", "first"),
            ("crash-4cfcf1690a9d7b77cd876d3c4b0edfc3e3467f78", "second"),
        ] {
            let data = std::fs::read(format!("{FIXTURES}/../fuzz/btf/{file}")).expect(file);
            let mut errors = Vec::new();
            let mut probe = |btf: &Btf| {
                for (ty, p) in [
                    ("sw_flow", "id"),
                    ("sw_flow_key", "phy.in_port"),
                    ("sw_flow_key", "ipv4.addr.src"),
                    ("sk_buff", "len"),
                ] {
                    if let Err(e @ BtfError::Malformed { .. }) = btf.member(ty, p) {
                        errors.push(e.to_string());
                    }
                }
            };
            if let Ok(btf) = Btf::parse(data.clone()) {
                probe(&btf);
            }
            let (head, rest) = data.split_first_chunk::<4>().expect("4 bytes");
            let at = u32::from_le_bytes(*head) as usize % (rest.len() + 1);
            let (base, split) = rest.split_at(at);
            if let Ok(btf) = Btf::parse_split(base.to_vec(), split.to_vec()) {
                probe(&btf);
            }
            eprintln!("{path}: {errors:?}");
            assert!(!errors.is_empty(), "{path}: no malformed error");
        }
    }
}
