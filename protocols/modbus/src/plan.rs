//! Read planning: adjacent points of one area are merged into as few
//! requests as possible, because on real devices the per-request round trip
//! costs far more than a few extra registers.

use crate::point::{Area, PointSpec};

/// One request: `count` registers (or bits) from `start`, feeding `points`
/// (indices into the device's point list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub area: Area,
    pub start: u16,
    pub count: u16,
    pub points: Vec<usize>,
}

/// Merges points whose gap to the block so far is at most `max_gap`
/// registers (or bits), never exceeding the protocol's per-request limit.
/// Points that overlap (bits of one register, say) share a block.
pub fn plan_reads(points: &[PointSpec], max_gap: u16) -> Vec<ReadBlock> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].area, points[i].address, points[i].width()));

    let mut blocks: Vec<ReadBlock> = Vec::new();
    for index in order {
        let point = &points[index];
        let (start, end) = (u32::from(point.address), point.end());
        if let Some(block) = blocks.last_mut() {
            let block_end = u32::from(block.start) + u32::from(block.count);
            let merged_end = block_end.max(end);
            let fits = merged_end - u32::from(block.start) <= u32::from(point.area.max_per_read());
            if block.area == point.area && start <= block_end + u32::from(max_gap) && fits {
                block.count = (merged_end - u32::from(block.start)) as u16;
                block.points.push(index);
                continue;
            }
        }
        blocks.push(ReadBlock {
            area: point.area,
            start: point.address,
            count: (end - start) as u16,
            points: vec![index],
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::point::{ByteOrder, DataType};

    fn point(area: Area, address: u16, data_type: DataType) -> PointSpec {
        PointSpec {
            name: format!("{area:?}{address}").into(),
            area,
            address,
            data_type,
            order: ByteOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: false,
            bit: (data_type == DataType::Bool && !area.is_bits()).then_some(0),
            length: None,
        }
    }

    /// (area, start, count) of each block.
    fn check(points: &[PointSpec], max_gap: u16, expected: &[(Area, u16, u16)]) {
        let blocks = plan_reads(points, max_gap);
        let got: Vec<_> = blocks.iter().map(|b| (b.area, b.start, b.count)).collect();
        assert_eq!(got, expected);
        let mut covered: Vec<usize> = blocks.iter().flat_map(|b| b.points.clone()).collect();
        covered.sort();
        assert_eq!(
            covered,
            (0..points.len()).collect::<Vec<_>>(),
            "every point read once"
        );
    }

    #[test]
    fn merges_adjacent_and_respects_gap_area_and_limits() {
        use Area::*;
        use DataType::*;
        check(
            &[point(Holding, 0, F32), point(Holding, 2, U16)],
            0,
            &[(Holding, 0, 3)],
        );
        check(
            &[point(Holding, 0, U16), point(Holding, 5, U16)],
            0,
            &[(Holding, 0, 1), (Holding, 5, 1)],
        );
        check(
            &[point(Holding, 5, U16), point(Holding, 0, U16)],
            4,
            &[(Holding, 0, 6)],
        );
        check(
            &[point(Holding, 0, U16), point(Input, 1, U16)],
            10,
            &[(Holding, 0, 1), (Input, 1, 1)],
        );
        check(
            &[point(Holding, 0, U16), point(Holding, 124, U16)],
            200,
            &[(Holding, 0, 125)],
        );
        check(
            &[point(Holding, 0, U16), point(Holding, 124, F32)],
            200,
            &[(Holding, 0, 1), (Holding, 124, 2)],
        );
        check(
            &[point(Holding, 3, Bool), point(Holding, 3, Bool)],
            0,
            &[(Holding, 3, 1)],
        );
        check(
            &[point(Coil, 0, Bool), point(Coil, 1999, Bool)],
            2000,
            &[(Coil, 0, 2000)],
        );
        check(&[point(Holding, 65534, U32)], 0, &[(Holding, 65534, 2)]);
    }

    proptest::proptest! {
        #[test]
        fn blocks_cover_every_point_within_limits(
            specs in proptest::collection::vec((0u16..400, 0usize..3, proptest::bool::ANY), 1..60),
            max_gap in 0u16..20,
        ) {
            let types = [DataType::U16, DataType::F32, DataType::F64];
            let points: Vec<PointSpec> = specs
                .iter()
                .map(|&(address, t, bits)| {
                    if bits { point(Area::Coil, address, DataType::Bool) } else { point(Area::Holding, address, types[t]) }
                })
                .collect();
            for block in plan_reads(&points, max_gap) {
                proptest::prop_assert!(block.count <= block.area.max_per_read());
                for &i in &block.points {
                    proptest::prop_assert_eq!(points[i].area, block.area);
                    proptest::prop_assert!(points[i].address >= block.start);
                    proptest::prop_assert!(points[i].end() <= u32::from(block.start) + u32::from(block.count));
                }
            }
        }
    }
}
