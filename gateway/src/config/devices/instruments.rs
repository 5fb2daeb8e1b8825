//! Raw serial instruments (`protocol = "serial"`): their framing, their
//! query and how their frames are decoded (regex with typed captures, NMEA
//! 0183, or a codec plug-in).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kite_core::serial::SerialLine;
use kite_modbus::DataType;
use kite_serial::decode::{CaptureField, FieldType, RegexDecoder};
use kite_serial::framing::{Framer, Framing};
use kite_serial::InstrumentSpec;
use toml::Spanned;

use super::{
    check_point_name, refuse_keys, Decode, Endian, InstrumentConfig, RawBytes, RawDecode,
    RawDevice, RawFraming, DEFAULT_MAX_FRAME,
};
use crate::config::resolve::Files;
use crate::config::Report;

impl RawDevice {
    pub(super) fn build_instrument(
        &self,
        report: &mut Report<'_>,
        base: &Path,
        line: SerialLine,
        poll_interval: Duration,
        timeout: Duration,
        files: &mut Files,
    ) -> Option<InstrumentConfig> {
        let device = self.name.get_ref();
        let bytes = |value: &Option<Spanned<RawBytes>>| {
            value.as_ref().map(|v| v.get_ref().clone().into_bytes())
        };
        let framing_kind = self
            .framing
            .as_ref()
            .map_or(RawFraming::Line, |f| *f.get_ref());
        let framing_span = self
            .framing
            .as_ref()
            .map_or(self.name.span(), Spanned::span);
        let framing = match framing_kind {
            RawFraming::Line => Framing::Line {
                delimiter: bytes(&self.delimiter).unwrap_or_else(|| b"\n".to_vec()),
            },
            RawFraming::Fixed => {
                let Some(length) = &self.length else {
                    report.push(framing_span, "framing = \"fixed\" needs `length`".into());
                    return None;
                };
                Framing::Fixed {
                    length: *length.get_ref(),
                }
            }
            RawFraming::Markers => {
                let (Some(start), Some(end)) = (bytes(&self.start), bytes(&self.end)) else {
                    report.push(
                        framing_span,
                        "framing = \"markers\" needs `start` and `end`".into(),
                    );
                    return None;
                };
                Framing::Markers { start, end }
            }
            RawFraming::LengthPrefix => Framing::LengthPrefix {
                offset: self.length_offset.as_ref().map_or(0, |v| *v.get_ref()),
                width: self.length_width.as_ref().map_or(1, |v| *v.get_ref()),
                big_endian: self
                    .length_endian
                    .as_ref()
                    .is_none_or(|v| *v.get_ref() == Endian::Big),
                adjust: self.length_adjust.as_ref().map_or(0, |v| *v.get_ref()),
            },
        };
        let max_frame = self
            .max_frame
            .as_ref()
            .map_or(DEFAULT_MAX_FRAME, |v| *v.get_ref());
        if !(1..=65_536).contains(&max_frame) {
            report.push(
                self.max_frame.as_ref().expect("not the default").span(),
                "max_frame must be 1 to 65536 bytes".into(),
            );
            return None;
        }
        if let Err(e) = Framer::new(framing.clone(), max_frame) {
            report.push(framing_span, format!("device {device:?}: {e}"));
            return None;
        }
        let request = bytes(&self.request);
        if request.as_ref().is_some_and(Vec::is_empty) {
            report.push(
                self.request.as_ref().expect("present").span(),
                "request must not be empty".into(),
            );
        }

        let decode_kind = self.decode.as_ref().map(|d| *d.get_ref());
        if decode_kind != Some(RawDecode::Codec) {
            self.refuse_codec_keys(report, "decode = \"codec\"");
        }
        if decode_kind != Some(RawDecode::Regex) {
            if let Some(pattern) = &self.pattern {
                report.push(pattern.span(), "`pattern` is for decode = \"regex\"".into());
            }
        }
        let decode = match decode_kind {
            None => {
                report.push(
                    self.name.span(),
                    format!(
                        "device {device:?}: protocol serial needs `decode` (\"regex\" or \"nmea\")"
                    ),
                );
                return None;
            }
            Some(RawDecode::Nmea) => {
                if let Some(point) = self.points.first() {
                    report.push(
                        point.name.span(),
                        "decode = \"nmea\" names its own points (latitude, longitude, speed, ...)"
                            .into(),
                    );
                }
                Decode::Nmea
            }
            Some(RawDecode::Codec) => {
                if let Some(point) = self.points.first() {
                    report.push(
                        point.name.span(),
                        "decode = \"codec\" names its own points".into(),
                    );
                }
                let Some((path, config_json)) = self.codec_plugin(base, files) else {
                    report.push(self.name.span(), format!("device {device:?}: decode = \"codec\" needs `codec`, the path of a codec plug-in"));
                    return None;
                };
                Decode::Codec { path, config_json }
            }
            Some(RawDecode::Regex) => {
                let Some(pattern) = &self.pattern else {
                    report.push(
                        self.name.span(),
                        format!("device {device:?}: decode = \"regex\" needs `pattern`"),
                    );
                    return None;
                };
                let fields = self.capture_fields(report);
                if let Err(e) = RegexDecoder::new(pattern.get_ref(), fields.clone()) {
                    report.push(pattern.span(), format!("pattern: {e}"));
                    return None;
                }
                Decode::Regex {
                    pattern: pattern.get_ref().clone(),
                    fields,
                }
            }
        };
        Some(InstrumentConfig {
            spec: InstrumentSpec {
                name: Arc::from(device.as_str()),
                line,
                framing,
                max_frame,
                request,
                poll_interval,
                timeout,
            },
            decode,
        })
    }

    fn capture_fields(&self, report: &mut Report<'_>) -> Vec<CaptureField> {
        let mut point_names = HashSet::new();
        let mut fields = Vec::new();
        for point in &self.points {
            check_point_name(report, &mut point_names, &point.name, self.name.get_ref());
            refuse_keys(
                report,
                [
                    point.address.as_ref().map(Spanned::span),
                    point.area.as_ref().map(Spanned::span),
                    point.bit.as_ref().map(Spanned::span),
                    point.length.as_ref().map(Spanned::span),
                ],
                "this key is for Modbus points; raw serial points take `capture`",
            );
            if let Some(writable) = point.writable.as_ref().filter(|w| *w.get_ref()) {
                report.push(
                    writable.span(),
                    "raw serial points cannot be written".into(),
                );
            }
            let field_type = match point.data_type.as_ref().map(|t| *t.get_ref()) {
                None | Some(DataType::F64 | DataType::F32) => FieldType::Float,
                Some(
                    DataType::I64
                    | DataType::I32
                    | DataType::I16
                    | DataType::U16
                    | DataType::U32
                    | DataType::U64,
                ) => FieldType::Int,
                Some(DataType::Bool) => FieldType::Bool,
                Some(DataType::String) => FieldType::Text,
            };
            if !point.scale.is_finite() || !point.offset.is_finite() {
                report.push(
                    point.name.span(),
                    "scale and offset must be finite numbers".into(),
                );
            }
            fields.push(CaptureField {
                point: Arc::from(point.name.get_ref().as_str()),
                capture: point
                    .capture
                    .as_ref()
                    .map_or_else(|| point.name.get_ref().clone(), |c| c.get_ref().clone()),
                field_type,
                scale: point.scale,
                offset: point.offset,
                unit: point.unit.as_deref().map(Arc::from),
            });
        }
        if fields.is_empty() {
            report.push(
                self.name.span(),
                format!(
                    "device {:?}: decode = \"regex\" needs [[devices.points]] naming the captures",
                    self.name.get_ref()
                ),
            );
        }
        fields
    }
}
