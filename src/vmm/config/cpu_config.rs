//! CPU templates: the static `cpu_template` names of `/machine-config` and
//! the custom templates of `PUT /cpu-config`, in Firecracker's JSON format.
//!
//! A custom template modifies CPUID registers and MSRs with bitmaps:
//! strings of `0`, `1` and `x` (keep), most significant bit first,
//! optionally prefixed with `0b` and split with `_`. A bitmap shorter
//! than its register is padded with `x` on the left, as Firecracker does;
//! a longer one is refused. Leaves, subleaves and MSR addresses are
//! strings with a `0x` or `0b` prefix.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// The static templates Firecracker offers on x86_64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaticTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
}

/// Every accepted `cpu_template` value, as error messages list them.
pub const CPU_TEMPLATE_NAMES: &str = "\"None\", \"C3\", \"T2\", \"T2S\", \"T2CL\", \"T2A\"";

impl StaticTemplate {
    /// `None` for "None"; an error naming every accepted value otherwise.
    pub fn parse(name: &str) -> Result<Option<StaticTemplate>, ConfigError> {
        Ok(Some(match name {
            "None" => return Ok(None),
            "C3" => StaticTemplate::C3,
            "T2" => StaticTemplate::T2,
            "T2S" => StaticTemplate::T2S,
            "T2CL" => StaticTemplate::T2CL,
            "T2A" => StaticTemplate::T2A,
            other => {
                return Err(ConfigError::CpuTemplate(
                    crate::text::echo(other).into_owned(),
                ))
            }
        }))
    }

    pub fn name(self) -> &'static str {
        match self {
            StaticTemplate::C3 => "C3",
            StaticTemplate::T2 => "T2",
            StaticTemplate::T2S => "T2S",
            StaticTemplate::T2CL => "T2CL",
            StaticTemplate::T2A => "T2A",
        }
    }
}

/// Bits to force and bits to keep: bit i of `mask` set means bit i of
/// the register becomes bit i of `value`; clear means it is kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    pub mask: u64,
    pub value: u64,
}

impl Bitmap {
    pub const fn new(mask: u64, value: u64) -> Bitmap {
        Bitmap {
            mask,
            value: value & mask,
        }
    }

    pub fn apply(&self, reg: u64) -> u64 {
        (reg & !self.mask) | (self.value & self.mask)
    }

    pub fn apply32(&self, reg: u32) -> u32 {
        // A CPUID bitmap never has bits above 31 (parsing refuses them).
        self.apply(u64::from(reg)) as u32
    }

    /// Parses a bitmap of at most `bits` bits.
    pub fn parse(s: &str, bits: u32) -> Result<Bitmap, String> {
        let digits = s.strip_prefix("0b").unwrap_or(s);
        let mut out = Bitmap::default();
        let mut i = 0u32;
        for c in digits.bytes().rev() {
            if c == b'_' {
                continue;
            }
            if i >= bits {
                return Err(format!(
                    "bitmap {:?} has more than {bits} bits",
                    crate::text::echo(s)
                ));
            }
            match c {
                b'x' | b'X' => {}
                b'0' => out.mask |= 1 << i,
                b'1' => {
                    out.mask |= 1 << i;
                    out.value |= 1 << i;
                }
                _ => {
                    return Err(format!(
                        "bitmap {:?}: {:?} is not 0, 1, x or _",
                        crate::text::echo(s),
                        char::from(c)
                    ))
                }
            }
            i += 1;
        }
        if i == 0 {
            return Err(format!("bitmap {:?} has no bits", crate::text::echo(s)));
        }
        Ok(out)
    }

    /// The bitmap as `0b` and `bits` characters.
    pub fn show(&self, bits: u32) -> String {
        let mut s = String::with_capacity(bits as usize + 2);
        s.push_str("0b");
        for i in (0..bits).rev() {
            s.push(match (self.mask >> i & 1, self.value >> i & 1) {
                (0, _) => 'x',
                (_, 0) => '0',
                _ => '1',
            });
        }
        s
    }
}

fn bitmap<'de, D: Deserializer<'de>>(d: D, bits: u32) -> Result<Bitmap, D::Error> {
    let s = String::deserialize(d)?;
    Bitmap::parse(&s, bits).map_err(D::Error::custom)
}

fn bitmap32<'de, D: Deserializer<'de>>(d: D) -> Result<Bitmap, D::Error> {
    bitmap(d, 32)
}

fn bitmap64<'de, D: Deserializer<'de>>(d: D) -> Result<Bitmap, D::Error> {
    bitmap(d, 64)
}

fn show32<S: Serializer>(b: &Bitmap, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&b.show(32))
}

fn show64<S: Serializer>(b: &Bitmap, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&b.show(64))
}

/// A number written as a `0x` (hex) or `0b` (binary) string.
fn prefixed_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    let parsed = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else if let Some(b) = s.strip_prefix("0b") {
        u32::from_str_radix(b, 2)
    } else {
        return Err(D::Error::custom(format!(
            "{:?} needs a 0x (hexadecimal) or 0b (binary) prefix",
            crate::text::echo(&s)
        )));
    };
    parsed.map_err(|e| {
        D::Error::custom(format!(
            "{:?} is not a 32-bit number: {e}",
            crate::text::echo(&s)
        ))
    })
}

fn hex_u32<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegister {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

fn register<'de, D: Deserializer<'de>>(d: D) -> Result<CpuidRegister, D::Error> {
    let s = String::deserialize(d)?;
    Ok(match s.as_str() {
        "eax" => CpuidRegister::Eax,
        "ebx" => CpuidRegister::Ebx,
        "ecx" => CpuidRegister::Ecx,
        "edx" => CpuidRegister::Edx,
        _ => {
            return Err(D::Error::custom(format!(
                "unknown CPUID register {:?}: use eax, ebx, ecx or edx",
                crate::text::echo(&s)
            )))
        }
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterModifier {
    #[serde(deserialize_with = "register")]
    pub register: CpuidRegister,
    #[serde(deserialize_with = "bitmap32", serialize_with = "show32")]
    pub bitmap: Bitmap,
}

/// The modifiers of one CPUID leaf and subleaf; `flags` become the
/// entry's KVM flags (1: the subleaf is significant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeafModifier {
    #[serde(deserialize_with = "prefixed_u32", serialize_with = "hex_u32")]
    pub leaf: u32,
    #[serde(deserialize_with = "prefixed_u32", serialize_with = "hex_u32")]
    pub subleaf: u32,
    pub flags: u32,
    pub modifiers: Vec<CpuidRegisterModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsrModifier {
    #[serde(deserialize_with = "prefixed_u32", serialize_with = "hex_u32")]
    pub addr: u32,
    #[serde(deserialize_with = "bitmap64", serialize_with = "show64")]
    pub bitmap: Bitmap,
}

/// `PUT /cpu-config`, and the `cpu-config` key of a config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// KVM capabilities the host must have ("N"), or that need not be
    /// checked ("!N").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm_capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msr_modifiers: Vec<MsrModifier>,
    /// aarch64 only: refused here.
    #[serde(default, skip_serializing)]
    pub vcpu_features: Option<serde_json::Value>,
    /// aarch64 only: refused here.
    #[serde(default, skip_serializing)]
    pub reg_modifiers: Option<serde_json::Value>,
}

/// A KVM capability a template names: whether it must be present (or
/// only stops being checked), and its number.
pub fn parse_capability(s: &str) -> Result<(bool, u32), ConfigError> {
    let (required, n) = match s.strip_prefix('!') {
        Some(n) => (false, n),
        None => (true, s),
    };
    let n = n.parse::<u32>().map_err(|_| {
        ConfigError::CpuConfig(format!(
            "kvm_capabilities: {:?} is not a capability number (\"N\" or \"!N\")",
            crate::text::echo(s)
        ))
    })?;
    Ok((required, n))
}

impl CpuConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpu_features.is_some() {
            return Err(ConfigError::CpuConfig(
                "vcpu_features is for aarch64 hosts; this host is x86_64".into(),
            ));
        }
        if self.reg_modifiers.is_some() {
            return Err(ConfigError::CpuConfig(
                "reg_modifiers is for aarch64 hosts; this host is x86_64 (use cpuid_modifiers and msr_modifiers)".into(),
            ));
        }
        for c in &self.kvm_capabilities {
            parse_capability(c)?;
        }
        for (i, l) in self.cpuid_modifiers.iter().enumerate() {
            if l.modifiers.is_empty() {
                return Err(ConfigError::CpuConfig(format!(
                    "cpuid_modifiers[{i}] (leaf {:#x}) has no modifiers",
                    l.leaf
                )));
            }
            if self.cpuid_modifiers[..i]
                .iter()
                .any(|o| (o.leaf, o.subleaf) == (l.leaf, l.subleaf))
            {
                return Err(ConfigError::CpuConfig(format!(
                    "cpuid_modifiers: leaf {:#x} subleaf {:#x} appears twice",
                    l.leaf, l.subleaf
                )));
            }
        }
        for (i, m) in self.msr_modifiers.iter().enumerate() {
            if self.msr_modifiers[..i].iter().any(|o| o.addr == m.addr) {
                return Err(ConfigError::CpuConfig(format!(
                    "msr_modifiers: MSR {:#x} appears twice",
                    m.addr
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_parse_and_show() {
        let b = Bitmap::parse("0b1x0_1", 32).unwrap();
        assert_eq!((b.mask, b.value), (0b1011, 0b1001));
        assert_eq!(b.apply32(0b0110), 0b1101);
        assert_eq!(b.show(8), "0bxxxx1x01");
        assert_eq!(Bitmap::parse(&b.show(32), 32).unwrap(), b);
        let full = format!("0b{}", "1".repeat(64));
        assert_eq!(Bitmap::parse(&full, 64).unwrap().mask, u64::MAX);
        let long = format!("0b{}", "0".repeat(33));
        assert!(Bitmap::parse(&long, 32)
            .unwrap_err()
            .contains("more than 32"));
        assert!(Bitmap::parse("0b10z1", 32).unwrap_err().contains("'z'"));
        assert!(Bitmap::parse("0b", 32).is_err());
    }

    #[test]
    fn firecracker_template_json() {
        let t: CpuConfig = serde_json::from_str(
            r#"{"kvm_capabilities": ["!56"],
                "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                  "modifiers": [{"register": "eax", "bitmap": "0bxxxx000000000011xx00011011110010"}]}],
                "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}]}"#,
        )
        .unwrap();
        t.validate().unwrap();
        assert_eq!(t.cpuid_modifiers[0].leaf, 1);
        assert_eq!(t.cpuid_modifiers[0].modifiers[0].bitmap.mask, 0x0fff_3fff);
        assert_eq!(t.msr_modifiers[0].addr, 0x10a);
        let back = serde_json::to_value(&t).unwrap();
        assert_eq!(back["cpuid_modifiers"][0]["leaf"], "0x1");
        let again: CpuConfig = serde_json::from_value(back).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn bad_templates_say_why() {
        let err = |s: &str| {
            serde_json::from_str::<CpuConfig>(s)
                .unwrap_err()
                .to_string()
        };
        let e = err(
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "esi", "bitmap": "0b1"}]}]}"#,
        );
        assert!(e.contains("unknown CPUID register"), "{e}");
        let e = err(
            r#"{"cpuid_modifiers": [{"leaf": "1", "subleaf": "0x0", "flags": 0, "modifiers": []}]}"#,
        );
        assert!(e.contains("prefix"), "{e}");
        let e = err(r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b12"}]}"#);
        assert!(e.contains("not 0, 1, x"), "{e}");
        let t: CpuConfig = serde_json::from_str(r#"{"vcpu_features": []}"#).unwrap();
        assert!(t.validate().is_err());
        let t: CpuConfig = serde_json::from_str(r#"{"kvm_capabilities": ["x"]}"#).unwrap();
        assert!(t.validate().is_err());
    }

    #[test]
    fn static_names() {
        for n in ["C3", "T2", "T2S", "T2CL", "T2A"] {
            assert_eq!(StaticTemplate::parse(n).unwrap().unwrap().name(), n);
        }
        assert_eq!(StaticTemplate::parse("None").unwrap(), None);
        let e = StaticTemplate::parse("t2").unwrap_err().to_string();
        assert!(e.contains("\"T2CL\""), "{e}");
    }
}
