//! The DynamoDB state table on the SDK: the port's typed conditions written as condition
//! expressions (ARCHITECTURE.md, "The state table"). Item: `runner` (the key), `lease_holder`,
//! `lease_epoch`, `lease_expires` (ms; 0 = released), `record` (the record's JSON),
//! `record_version`.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{classify, Traced};
use runner_updater_core::domain::Millis;
use runner_updater_ports::{
    AwsOp, Fence, LeaseCondition, LeaseFields, PortError, RecordCondition, StateItem, StatePage,
    StateTable, StoredRecord,
};

const KEY: &str = "runner";
const HOLDER: &str = "lease_holder";
const EPOCH: &str = "lease_epoch";
const EXPIRES: &str = "lease_expires";
const RECORD: &str = "record";
const VERSION: &str = "record_version";

const LEASE_UPDATE: &str = "SET #h = :h, #e = :e, #x = :x";
/// A free lease taken in one write: the next epoch computed by DynamoDB.
const LEASE_TAKE: &str = "SET #h = :h, #x = :x, #e = if_not_exists(#e, :zero) + :one";
/// Free: never taken, or ended (released: 0) before `:eb`.
const LEASE_FREE: &str = "attribute_not_exists(#e) OR #x < :eb";
const RECORD_UPDATE: &str = "SET #r = :r, #v = :v";
/// The record, and the lease's end (a renewal or a release folded into the write).
const RECORD_AND_LEASE_END_UPDATE: &str = "SET #r = :r, #v = :v, #x = :le";

/// The state table through the SDK.
#[derive(Debug, Clone)]
pub struct AwsTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl AwsTable {
    /// The table `table` through `client`.
    #[must_use]
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        AwsTable {
            client,
            table: table.to_owned(),
        }
    }
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The attribute names the expressions use (`#h` → `lease_holder`, …): only those (DynamoDB
/// refuses a name an expression does not use).
fn names(expressions: &[&str]) -> HashMap<String, String> {
    [
        ("#h", HOLDER),
        ("#e", EPOCH),
        ("#x", EXPIRES),
        ("#r", RECORD),
        ("#v", VERSION),
    ]
    .into_iter()
    .filter(|(k, _)| expressions.iter().any(|e| e.contains(k)))
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A lease condition as an expression, with its values.
fn lease_condition(condition: &LeaseCondition) -> (String, Vec<(&'static str, AttributeValue)>) {
    match condition {
        LeaseCondition::NoLease => ("attribute_not_exists(#e)".to_owned(), vec![]),
        LeaseCondition::EndedBefore {
            epoch,
            ended_before,
        } => (
            "#e = :ce AND #x < :cb".to_owned(),
            vec![(":ce", n(*epoch)), (":cb", n(ended_before.0))],
        ),
        LeaseCondition::HeldBy { holder, epoch } => (
            "#h = :ch AND #e = :ce".to_owned(),
            vec![(":ch", s(holder)), (":ce", n(*epoch))],
        ),
        LeaseCondition::HeldLive { holder, epoch, now } => (
            "#h = :ch AND #e = :ce AND #x > :cn".to_owned(),
            vec![(":ch", s(holder)), (":ce", n(*epoch)), (":cn", n(now.0))],
        ),
    }
}

/// A record condition as an expression, with its values.
fn record_condition(condition: &RecordCondition) -> (String, Vec<(&'static str, AttributeValue)>) {
    let (version, mut values) = match condition.version {
        Some(version) => ("#v = :cv", vec![(":cv", n(version))]),
        None => ("attribute_not_exists(#v)", vec![]),
    };
    let fence = match &condition.fence {
        Fence::Held {
            holder, epoch, now, ..
        } => {
            values.extend([(":fh", s(holder)), (":fe", n(*epoch)), (":fn", n(now.0))]);
            "#h = :fh AND #e = :fe AND #x > :fn"
        }
        Fence::FreeOrOwn {
            holder,
            free_before,
        } => {
            values.extend([(":fh", s(holder)), (":fb", n(free_before.0))]);
            "(attribute_not_exists(#h) OR #h = :fh OR #x < :fb)"
        }
    };
    (format!("{version} AND {fence}"), values)
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

/// An item as the port sees it. A lease whose attributes cannot be read (written by hand) is
/// held by `unreadable-lease` for ever: nothing acts on the runner until ops mend it.
fn state_item(item: &HashMap<String, AttributeValue>) -> Option<StateItem> {
    let runner = text(item, KEY)?.to_owned();
    let lease = if item.contains_key(EPOCH) || item.contains_key(HOLDER) {
        Some(
            match (text(item, HOLDER), number(item, EPOCH), number(item, EXPIRES)) {
                (Some(holder), Some(epoch), Some(expires)) => LeaseFields {
                    holder: holder.to_owned(),
                    epoch,
                    expires_at: Millis(expires),
                },
                _ => LeaseFields {
                    holder: format!("unreadable-lease (the lease of {runner} in the state table cannot be read; mend or delete it)"),
                    epoch: number(item, EPOCH).unwrap_or(0),
                    expires_at: Millis(u64::MAX),
                },
            },
        )
    } else {
        None
    };
    let record = match (text(item, RECORD), number(item, VERSION)) {
        (Some(record), Some(version)) => Some(StoredRecord {
            text: record.to_owned(),
            version,
        }),
        // A record attribute that is not a string: an unreadable record, named as such by
        // the store's decoding (nothing is written over it).
        (None, Some(version)) => Some(StoredRecord {
            text: String::new(),
            version,
        }),
        // A record without a readable version (written by hand): unreadable too — never
        // hidden (and then overwritten) as if there were none.
        (Some(_), None) => Some(StoredRecord {
            text: String::new(),
            version: 0,
        }),
        (None, None) => {
            (item.contains_key(RECORD) || item.contains_key(VERSION)).then(|| StoredRecord {
                text: String::new(),
                version: 0,
            })
        }
    };
    Some(StateItem {
        runner,
        lease,
        record,
    })
}

impl AwsTable {
    /// One conditional `UpdateItem` of the runner's item: `update` if `condition` holds, with
    /// the expressions' values and only the attribute names they use.
    async fn update(
        &self,
        runner: &str,
        update: &str,
        condition: String,
        values: Vec<(&'static str, AttributeValue)>,
    ) -> Result<(), PortError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(runner))
            .update_expression(update)
            .set_expression_attribute_names(Some(names(&[update, &condition])))
            .condition_expression(condition);
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        request
            .send()
            .traced(AwsOp::UpdateItem)
            .await
            .map_err(|e| classify(AwsOp::UpdateItem, &e))?;
        Ok(())
    }
}

#[async_trait]
impl StateTable for AwsTable {
    async fn get(&self, runner: &str) -> Result<Option<StateItem>, PortError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, s(runner))
            .consistent_read(true)
            .send()
            .traced(AwsOp::GetItem)
            .await
            .map_err(|e| classify(AwsOp::GetItem, &e))?;
        Ok(output.item().and_then(state_item))
    }

    async fn write_lease(
        &self,
        runner: &str,
        lease: &LeaseFields,
        condition: &LeaseCondition,
    ) -> Result<(), PortError> {
        let (expression, mut values) = lease_condition(condition);
        values.extend([
            (":h", s(&lease.holder)),
            (":e", n(lease.epoch)),
            (":x", n(lease.expires_at.0)),
        ]);
        self.update(runner, LEASE_UPDATE, expression, values).await
    }

    async fn take_free_lease(
        &self,
        runner: &str,
        holder: &str,
        expires_at: Millis,
        ended_before: Millis,
    ) -> Result<Option<u64>, PortError> {
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(runner))
            .update_expression(LEASE_TAKE)
            .set_expression_attribute_names(Some(names(&[LEASE_TAKE, LEASE_FREE])))
            .condition_expression(LEASE_FREE)
            .expression_attribute_values(":h", s(holder))
            .expression_attribute_values(":x", n(expires_at.0))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":eb", n(ended_before.0))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .traced(AwsOp::UpdateItem)
            .await;
        match output {
            Ok(output) => {
                let epoch = output.attributes().and_then(|a| number(a, EPOCH));
                epoch.map(Some).ok_or_else(|| {
                    PortError::new(
                        runner_updater_ports::ErrorKind::Permanent,
                        AwsOp::UpdateItem,
                        format!("the take of {runner}'s lease answered no epoch"),
                    )
                })
            }
            Err(e) => {
                let error = classify(AwsOp::UpdateItem, &e);
                if error.kind == runner_updater_ports::ErrorKind::Conflict {
                    Ok(None)
                } else {
                    Err(error)
                }
            }
        }
    }

    async fn write_record(
        &self,
        runner: &str,
        text: &str,
        condition: &RecordCondition,
    ) -> Result<u64, PortError> {
        let (expression, mut values) = record_condition(condition);
        let version = condition.version.map_or(1, |v| v + 1);
        values.extend([(":r", s(text)), (":v", n(version))]);
        // A renewal or a release folded into the write: the lease's end set with the record.
        let update = match &condition.fence {
            Fence::Held {
                lease_end: Some(end),
                ..
            } => {
                values.push((":le", n(end.0)));
                RECORD_AND_LEASE_END_UPDATE
            }
            _ => RECORD_UPDATE,
        };
        self.update(runner, update, expression, values).await?;
        Ok(version)
    }

    async fn scan_page(&self, token: Option<&str>) -> Result<StatePage, PortError> {
        let output = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .set_exclusive_start_key(token.map(|t| HashMap::from([(KEY.to_owned(), s(t))])))
            .send()
            .traced(AwsOp::Scan)
            .await
            .map_err(|e| classify(AwsOp::Scan, &e))?;
        let next = output
            .last_evaluated_key()
            .and_then(|key| text(key, KEY))
            .map(str::to_owned);
        Ok(StatePage {
            items: output.items().iter().filter_map(state_item).collect(),
            next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_written_as_expressions_over_the_named_attributes() {
        let (held, values) = record_condition(&RecordCondition {
            version: Some(4),
            fence: Fence::Held {
                holder: "c1".to_owned(),
                epoch: 2,
                now: Millis(9),
                lease_end: None,
            },
        });
        assert_eq!(held, "#v = :cv AND #h = :fh AND #e = :fe AND #x > :fn");
        assert_eq!(values.len(), 4);
        let (free, _) = record_condition(&RecordCondition {
            version: None,
            fence: Fence::FreeOrOwn {
                holder: "c1".to_owned(),
                free_before: Millis(9),
            },
        });
        assert_eq!(
            free,
            "attribute_not_exists(#v) AND (attribute_not_exists(#h) OR #h = :fh OR #x < :fb)"
        );
        let (first, values) = lease_condition(&LeaseCondition::NoLease);
        assert_eq!(
            (first.as_str(), values.len()),
            ("attribute_not_exists(#e)", 0)
        );
        // Every name an expression uses is defined, and no other.
        let used = names(&[LEASE_UPDATE, &first]);
        assert_eq!(used.len(), 3, "{used:?}");
        assert_eq!(names(&[RECORD_UPDATE, &held]).len(), 5);
    }

    #[test]
    fn a_record_that_cannot_be_read_is_never_taken_for_none() {
        let item = |pairs: &[(&str, AttributeValue)]| {
            let mut item = HashMap::from([(KEY.to_owned(), s("r"))]);
            for (k, v) in pairs {
                item.insert((*k).to_owned(), v.clone());
            }
            state_item(&item).unwrap().record
        };
        assert_eq!(item(&[]), None, "no record yet");
        for unreadable in [
            item(&[(RECORD, s("{}"))]),
            item(&[(RECORD, s("{}")), (VERSION, s("seven"))]),
            item(&[(RECORD, n(3)), (VERSION, n(3))]),
            item(&[(VERSION, n(3))]),
        ] {
            let record = unreadable.expect("an unreadable record, not none");
            assert!(record.text.is_empty(), "{record:?}: decodes as corrupt");
        }
        let fine = item(&[(RECORD, s("{}")), (VERSION, n(3))]).unwrap();
        assert_eq!((fine.text.as_str(), fine.version), ("{}", 3));
    }

    #[test]
    fn an_unreadable_lease_is_held_by_unreadable_lease_for_ever() {
        let item = HashMap::from([
            (KEY.to_owned(), s("r")),
            (HOLDER.to_owned(), s("c1")),
            (EPOCH.to_owned(), s("three")),
        ]);
        let lease = state_item(&item).unwrap().lease.unwrap();
        assert!(lease.holder.starts_with("unreadable-lease"));
        assert_eq!(lease.expires_at, Millis(u64::MAX));
    }
}
