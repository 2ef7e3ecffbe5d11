//! One decorator shape for the AWS ports: [`Decorated`] forwards every method of
//! [`ParameterStore`], [`Ecs`] and [`CloudFormation`] to the port it wraps, telling its
//! [`Hooks`] before and after each call, described as a [`Call`]. The rate limits, the
//! benchmark's counts, the simulation's audit and slowness and the crash hook are hooks, not
//! hand-written forwards: a call cannot be weighed by one and counted differently by another,
//! and a port method added is forwarded once, here.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use runner_updater_core::domain::infra::{ChangeSet, StackEvent};
use runner_updater_core::domain::observed::{ServiceDeployment, ServiceState, StackState, Task};
use runner_updater_core::domain::task_definition::TaskDefinition;
use runner_updater_core::domain::Millis;

use crate::{
    walk_pages, AwsOp, ChangeSetRequest, CloudFormation, Ecs, LeaseCondition, LeaseFields,
    Parameter, ParameterPage, ParameterStore, PortCall, PortError, RecordCondition, ServiceUpdate,
    StateItem, StatePage, StateTable, TaskDefinitionPage, TemplateSummary,
};

/// What a call is about, for the hooks that audit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A parameter, or a folder of them.
    Parameter(&'a str),
    /// A service.
    Service {
        /// Its cluster.
        cluster: &'a str,
        /// Its name.
        service: &'a str,
    },
    /// Services of a cluster.
    Services {
        /// The cluster.
        cluster: &'a str,
    },
    /// A service pointed at a task definition (`update_service`).
    ServiceUpdate {
        /// Its cluster.
        cluster: &'a str,
        /// Its name.
        service: &'a str,
        /// The task definition it is pointed at.
        task_definition_arn: &'a str,
    },
    /// Service deployments (`describe_service_deployments`), by ARN.
    ServiceDeployments(&'a [String]),
    /// A service deployment of a service, stopped (`stop_service_deployment`).
    ServiceDeploymentStop {
        /// The service's cluster.
        cluster: &'a str,
        /// The service.
        service: &'a str,
        /// The service deployment's ARN.
        arn: &'a str,
    },
    /// A task definition (for `register_clone`: the base revision cloned).
    TaskDefinition(&'a str),
    /// The task-definition families starting with a prefix.
    Families(&'a str),
    /// A stack (and its change sets and events).
    Stack(&'a str),
    /// A runner's item in the state table.
    Item(&'a str),
    /// The state table (a scan).
    Table,
}

/// One call of a port, as the hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    /// The port method and its size.
    pub port: PortCall,
    /// What it is about.
    pub target: Target<'a>,
}

/// What a decorator does around each call. No default bodies: a hook says what it does
/// before and after, even when that is nothing.
#[async_trait]
pub trait Hooks: Send + Sync {
    /// Before the call is sent (a rate limit waits here).
    async fn before(&self, call: &Call<'_>);
    /// After it answered: `failed` is its error, if it failed.
    async fn after(&self, call: &Call<'_>, failed: Option<&PortError>);
    /// `op`'s turn at the pace AWS allows it (`Ecs::pace`): a rate limit of its own waits here;
    /// any other hook has nothing to do.
    async fn pace(&self, op: AwsOp) {
        let _ = op;
    }
}

#[async_trait]
impl<H: Hooks + ?Sized> Hooks for Arc<H> {
    async fn before(&self, call: &Call<'_>) {
        (**self).before(call).await;
    }
    async fn after(&self, call: &Call<'_>, failed: Option<&PortError>) {
        (**self).after(call, failed).await;
    }
    async fn pace(&self, op: AwsOp) {
        (**self).pace(op).await;
    }
}

/// A port with hooks around each of its calls.
pub struct Decorated<P: ?Sized, H> {
    /// The port wrapped.
    pub inner: Arc<P>,
    /// What runs around each call.
    pub hooks: H,
}

impl<P: ?Sized, H> Decorated<P, H> {
    /// `inner` with `hooks` around each call.
    pub fn new(inner: Arc<P>, hooks: H) -> Self {
        Decorated { inner, hooks }
    }
}

impl<P: ?Sized, H: Hooks> Decorated<P, H> {
    async fn around<T: Send>(
        &self,
        call: Call<'_>,
        send: impl std::future::Future<Output = Result<T, PortError>> + Send,
    ) -> Result<T, PortError> {
        self.hooks.before(&call).await;
        let result = send.await;
        self.hooks.after(&call, result.as_ref().err()).await;
        result
    }
}

#[async_trait]
impl<H: Hooks> ParameterStore for Decorated<dyn ParameterStore, H> {
    async fn get_by_path(&self, path: &str) -> Result<BTreeMap<String, String>, PortError> {
        // Page by page, each page a call through the hooks (a folder of 25 weighs 3).
        walk_pages(self, path).await
    }
    async fn get_page(&self, path: &str, token: Option<&str>) -> Result<ParameterPage, PortError> {
        let call = Call {
            port: PortCall::GetPage,
            target: Target::Parameter(path),
        };
        self.around(call, self.inner.get_page(path, token)).await
    }
    async fn get(&self, name: &str) -> Result<Option<Parameter>, PortError> {
        let call = Call {
            port: PortCall::Get,
            target: Target::Parameter(name),
        };
        self.around(call, self.inner.get(name)).await
    }
    async fn put(&self, name: &str, value: &str, overwrite: bool) -> Result<u64, PortError> {
        let call = Call {
            port: PortCall::Put,
            target: Target::Parameter(name),
        };
        self.around(call, self.inner.put(name, value, overwrite))
            .await
    }
    async fn delete(&self, name: &str) -> Result<(), PortError> {
        let call = Call {
            port: PortCall::Delete,
            target: Target::Parameter(name),
        };
        self.around(call, self.inner.delete(name)).await
    }
}

#[async_trait]
impl<H: Hooks> Ecs for Decorated<dyn Ecs, H> {
    async fn pace(&self, op: AwsOp) {
        self.hooks.pace(op).await;
        self.inner.pace(op).await;
    }
    async fn describe_service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        let call = Call {
            port: PortCall::DescribeService,
            target: Target::Service { cluster, service },
        };
        self.around(call, self.inner.describe_service(cluster, service))
            .await
    }
    async fn describe_service_without_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        let call = Call {
            port: PortCall::DescribeServiceWithoutTasks,
            target: Target::Service { cluster, service },
        };
        self.around(
            call,
            self.inner.describe_service_without_tasks(cluster, service),
        )
        .await
    }
    async fn list_service_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Vec<Task>, PortError> {
        let call = Call {
            port: PortCall::ListServiceTasks,
            target: Target::Service { cluster, service },
        };
        self.around(call, self.inner.list_service_tasks(cluster, service))
            .await
    }
    async fn describe_services_without_tasks(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<Result<ServiceState, PortError>>, PortError> {
        let call = Call {
            port: PortCall::DescribeServicesWithoutTasks {
                services: services.len(),
            },
            target: Target::Services { cluster },
        };
        self.around(
            call,
            self.inner
                .describe_services_without_tasks(cluster, services),
        )
        .await
    }
    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinition, PortError> {
        let call = Call {
            port: PortCall::DescribeTaskDefinition,
            target: Target::TaskDefinition(arn),
        };
        self.around(call, self.inner.describe_task_definition(arn))
            .await
    }
    async fn list_task_definitions(
        &self,
        family_prefix: &str,
        token: Option<&str>,
    ) -> Result<TaskDefinitionPage, PortError> {
        let call = Call {
            port: PortCall::ListTaskDefinitions,
            target: Target::Families(family_prefix),
        };
        self.around(call, self.inner.list_task_definitions(family_prefix, token))
            .await
    }
    async fn register_clone(
        &self,
        base_arn: &str,
        container: &str,
        image: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<String, PortError> {
        let call = Call {
            port: PortCall::RegisterClone,
            target: Target::TaskDefinition(base_arn),
        };
        self.around(
            call,
            self.inner.register_clone(base_arn, container, image, tags),
        )
        .await
    }
    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition_arn: &str,
        only_over: Option<&[String]>,
    ) -> Result<ServiceUpdate, PortError> {
        let call = Call {
            port: PortCall::UpdateService,
            target: Target::ServiceUpdate {
                cluster,
                service,
                task_definition_arn,
            },
        };
        self.around(
            call,
            self.inner
                .update_service(cluster, service, task_definition_arn, only_over),
        )
        .await
    }
    async fn describe_service_deployments(
        &self,
        arns: &[String],
    ) -> Result<Vec<Result<ServiceDeployment, PortError>>, PortError> {
        let call = Call {
            port: PortCall::DescribeServiceDeployments {
                deployments: arns.len(),
            },
            target: Target::ServiceDeployments(arns),
        };
        self.around(call, self.inner.describe_service_deployments(arns))
            .await
    }
    async fn stop_service_deployment(
        &self,
        cluster: &str,
        service: &str,
        arn: &str,
    ) -> Result<(), PortError> {
        let call = Call {
            port: PortCall::StopServiceDeployment,
            target: Target::ServiceDeploymentStop {
                cluster,
                service,
                arn,
            },
        };
        self.around(
            call,
            self.inner.stop_service_deployment(cluster, service, arn),
        )
        .await
    }
}

#[async_trait]
impl<H: Hooks> CloudFormation for Decorated<dyn CloudFormation, H> {
    async fn describe_stack(&self, name: &str) -> Result<StackState, PortError> {
        let call = Call {
            port: PortCall::DescribeStack,
            target: Target::Stack(name),
        };
        self.around(call, self.inner.describe_stack(name)).await
    }
    async fn template_summary(
        &self,
        stack: &str,
        template_url: Option<&str>,
    ) -> Result<TemplateSummary, PortError> {
        let call = Call {
            port: PortCall::TemplateSummary,
            target: Target::Stack(stack),
        };
        self.around(call, self.inner.template_summary(stack, template_url))
            .await
    }
    async fn create_change_set(&self, request: &ChangeSetRequest) -> Result<String, PortError> {
        let call = Call {
            port: PortCall::CreateChangeSet,
            target: Target::Stack(&request.stack),
        };
        self.around(call, self.inner.create_change_set(request))
            .await
    }
    async fn describe_change_set(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<Option<ChangeSet>, PortError> {
        let call = Call {
            port: PortCall::DescribeChangeSet,
            target: Target::Stack(stack),
        };
        self.around(call, self.inner.describe_change_set(stack, name))
            .await
    }
    async fn execute_change_set(
        &self,
        stack: &str,
        name: &str,
        token: &str,
    ) -> Result<(), PortError> {
        let call = Call {
            port: PortCall::ExecuteChangeSet,
            target: Target::Stack(stack),
        };
        self.around(call, self.inner.execute_change_set(stack, name, token))
            .await
    }
    async fn delete_change_set(&self, stack: &str, name: &str) -> Result<(), PortError> {
        let call = Call {
            port: PortCall::DeleteChangeSet,
            target: Target::Stack(stack),
        };
        self.around(call, self.inner.delete_change_set(stack, name))
            .await
    }
    async fn stack_events(&self, stack: &str) -> Result<Vec<StackEvent>, PortError> {
        let call = Call {
            port: PortCall::StackEvents,
            target: Target::Stack(stack),
        };
        self.around(call, self.inner.stack_events(stack)).await
    }
}

#[async_trait]
impl<H: Hooks> StateTable for Decorated<dyn StateTable, H> {
    async fn get(&self, runner: &str) -> Result<Option<StateItem>, PortError> {
        let call = Call {
            port: PortCall::TableGet,
            target: Target::Item(runner),
        };
        self.around(call, self.inner.get(runner)).await
    }
    async fn write_lease(
        &self,
        runner: &str,
        lease: &LeaseFields,
        condition: &LeaseCondition,
    ) -> Result<(), PortError> {
        let call = Call {
            port: PortCall::TableWriteLease,
            target: Target::Item(runner),
        };
        self.around(call, self.inner.write_lease(runner, lease, condition))
            .await
    }
    async fn take_free_lease(
        &self,
        runner: &str,
        holder: &str,
        expires_at: Millis,
        ended_before: Millis,
    ) -> Result<Option<u64>, PortError> {
        let call = Call {
            port: PortCall::TableWriteLease,
            target: Target::Item(runner),
        };
        self.around(
            call,
            self.inner
                .take_free_lease(runner, holder, expires_at, ended_before),
        )
        .await
    }
    async fn write_record(
        &self,
        runner: &str,
        text: &str,
        condition: &RecordCondition,
    ) -> Result<u64, PortError> {
        let call = Call {
            port: PortCall::TableWriteRecord,
            target: Target::Item(runner),
        };
        self.around(call, self.inner.write_record(runner, text, condition))
            .await
    }
    async fn scan_page(&self, token: Option<&str>) -> Result<StatePage, PortError> {
        let call = Call {
            port: PortCall::TableScanPage,
            target: Target::Table,
        };
        self.around(call, self.inner.scan_page(token)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{AwsOp, ErrorKind};

    /// A folder of `n` parameters served in pages of ten; `fail_page` fails that page.
    struct Folder {
        n: usize,
        fail_page: Option<usize>,
    }

    #[async_trait]
    impl ParameterStore for Folder {
        async fn get_by_path(&self, _path: &str) -> Result<BTreeMap<String, String>, PortError> {
            unreachable!("a decorated store walks the pages itself")
        }
        async fn get_page(
            &self,
            path: &str,
            token: Option<&str>,
        ) -> Result<ParameterPage, PortError> {
            let page: usize = token.map_or(0, |t| t.parse().unwrap());
            if self.fail_page == Some(page) {
                return Err(PortError::new(
                    ErrorKind::Throttled,
                    AwsOp::GetParametersByPath,
                    "Rate exceeded",
                ));
            }
            let parameters = (page * 10..(page * 10 + 10).min(self.n))
                .map(|i| (format!("{path}/p{i:02}"), i.to_string()))
                .collect();
            let next = ((page + 1) * 10 < self.n).then(|| (page + 1).to_string());
            Ok(ParameterPage { parameters, next })
        }
        async fn get(&self, _name: &str) -> Result<Option<Parameter>, PortError> {
            Ok(None)
        }
        async fn put(&self, _name: &str, _value: &str, _overwrite: bool) -> Result<u64, PortError> {
            Ok(1)
        }
        async fn delete(&self, _name: &str) -> Result<(), PortError> {
            Ok(())
        }
    }

    /// Records every call the hooks hear of, before and after.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Hooks for Recorder {
        async fn before(&self, call: &Call<'_>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("before {:?}", call.port));
        }
        async fn after(&self, call: &Call<'_>, failed: Option<&PortError>) {
            let outcome = failed.map_or("ok".to_owned(), |e| format!("{:?}", e.kind));
            self.0
                .lock()
                .unwrap()
                .push(format!("after {:?} {outcome}", call.port));
        }
    }

    fn decorated(folder: Folder) -> (Decorated<dyn ParameterStore, Arc<Recorder>>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let inner: Arc<dyn ParameterStore> = Arc::new(folder);
        (Decorated::new(inner, recorder.clone()), recorder)
    }

    #[tokio::test]
    async fn a_decorated_folder_read_is_one_call_per_page_each_through_the_hooks() {
        let (store, recorder) = decorated(Folder {
            n: 25,
            fail_page: None,
        });
        let found = store.get_by_path("/f").await.unwrap();
        assert_eq!(found.len(), 25);
        assert_eq!(found["/f/p24"], "24");
        let heard = recorder.0.lock().unwrap().clone();
        assert_eq!(
            heard,
            [
                "before GetPage",
                "after GetPage ok",
                "before GetPage",
                "after GetPage ok",
                "before GetPage",
                "after GetPage ok"
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_call_is_told_to_the_hooks_and_returned_as_it_failed() {
        let (store, recorder) = decorated(Folder {
            n: 25,
            fail_page: Some(1),
        });
        let error = store.get_by_path("/f").await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Throttled);
        let heard = recorder.0.lock().unwrap().clone();
        assert_eq!(heard.last().unwrap(), "after GetPage Throttled");
        assert_eq!(store.put("/f/x", "1", true).await, Ok(1));
        assert_eq!(recorder.0.lock().unwrap().last().unwrap(), "after Put ok");
    }
}
