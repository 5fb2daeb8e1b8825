//! A stand-in for `bluetoothd`: BlueZ's D-Bus API as python-dbusmock's
//! `bluez5` template serves it, on a private bus started for one test. The
//! gateway under test is pointed at it with
//! `DBUS_SYSTEM_BUS_ADDRESS=<Bluez::bus_address()>` and talks to it as to
//! real BlueZ; the test plays the radio, making devices appear, advertise
//! and disappear, and reads back what the gateway asked the adapter to do.
//!
//! Connectable sensors: devices have `Device1.Connect` and `Disconnect`,
//! and a device given a [`Bluez::gatt_service`] gets GATT objects
//! (`GattService1`, `GattCharacteristic1` with ReadValue, WriteValue,
//! StartNotify, StopNotify) as bluetoothd exports them. A successful Connect
//! is answered after ~100 ms, as bluetoothd answers an LE Connect: once the
//! link is up, BEFORE the services are resolved. The signals are, in order:
//! PropertiesChanged(Device1: Connected=true), the Connect reply, ~50 ms
//! later, on the first connection only, one InterfacesAdded per service then
//! per characteristic, any Notifying=true of notify sessions resuming, then
//! PropertiesChanged(Device1: ServicesResolved=true). A client must wait for
//! ServicesResolved before looking for characteristics. As in bluetoothd
//! (cache "always"), the GATT objects outlive disconnections; so do notify
//! sessions, which resume on reconnection (Notifying is left true meanwhile).
//! A read emits PropertiesChanged(Value) on the characteristic, as BlueZ's
//! cache does, exactly like a notification: telling them apart takes knowing
//! whether a read is pending. `Value` is absent until the first read or
//! notification, `Notifying` exists only with "notify" or "indicate".
//! Errors, with bluetoothd's names and messages: Connect while one to the
//! same device is in flight: `org.bluez.Error.InProgress`; a failing one
//! ([`Bluez::fail_connects`]): `Failed` "le-connection-abort-by-local", one
//! cancelled by Disconnect, `disappear` or `remove_adapter`: `Failed`
//! "br-connection-canceled", by [`Bluez::drop_connection`]: `Failed`
//! "le-connection-abort-by-remote"; ReadValue/WriteValue while disconnected:
//! `Failed` "Not connected"; ReadValue without "read": `NotPermitted` "Read
//! not permitted"; StartNotify without "notify"/"indicate" and WriteValue
//! without a write flag: `NotSupported`; StopNotify without a session:
//! `Failed`. StartNotify while disconnected succeeds and takes effect on
//! connection, as in bluetoothd. [`Bluez::offer_monitors`] adds
//! `AdvertisementMonitorManager1` to an adapter.
//!
//! Limits: there is no radio and no kernel behind it, so nothing happens
//! unless the test makes it happen (discovery finds nothing by itself, a
//! device never ages out, a monitor's patterns select nothing). Adapters
//! have no `GattManager1` or `LEAdvertisingManager1`, devices no `Pair`, GATT
//! objects no descriptors; a connection attempt does not need the adapter
//! powered, and powering off leaves devices connected. Discovery sessions
//! are not tracked per client: `Discovering` stays true when the client that
//! started it leaves the bus. The adapter's discovery methods act as
//! bluetoothd's do (`org.bluez.Error.NotReady` while powered off,
//! `InvalidArguments` for a malformed filter) but change `Discovering` before
//! replying rather than after. dbusmock also emits
//! `org.freedesktop.DBus.Mock.MethodCalled` signals, which a client matching
//! on BlueZ's own interfaces never sees.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use zbus::export::serde::Serialize;
use zbus::zvariant::{DynamicType, ObjectPath, OwnedValue, Value};
use zbus::Connection;

use crate::{wait_until, Peer, PATIENCE};

const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";
/// Debian's python3-dbusmock is installed for the system Python only.
const PYTHON: &str = "/usr/bin/python3";

const BLUEZ: &str = "org.bluez";
const MOCK: &str = "org.freedesktop.DBus.Mock";
const BLUEZ_MOCK: &str = "org.bluez.Mock";
const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const ADAPTER: &str = "org.bluez.Adapter1";
const DEVICE: &str = "org.bluez.Device1";

/// `UpdateDevice(o path, a{sv} properties)` on `/`: sets the device's
/// properties and emits one PropertiesChanged carrying exactly them.
/// (dbusmock's own UpdateProperties cannot emit dictionary values.)
const UPDATE_DEVICE: &str = r#"
if args[0] not in objects:
    raise dbus.exceptions.DBusException('no device ' + args[0], name='org.freedesktop.DBus.Mock.NameError')
device = objects[args[0]]
device.props['org.bluez.Device1'].update(args[1])
device.EmitSignal('org.freedesktop.DBus.Properties', 'PropertiesChanged', 'sa{sv}as',
                  ['org.bluez.Device1', args[1], dbus.Array([], signature='s')])
"#;

/// Adapter1 discovery methods as bluetoothd behaves, replacing the
/// template's (which fail unless a filter was set, and toggle Discoverable).
const START_DISCOVERY: &str = r#"
props = self.props['org.bluez.Adapter1']
if not props['Powered']:
    raise dbus.exceptions.DBusException('Resource Not Ready', name='org.bluez.Error.NotReady')
if not props['Discovering']:
    self.UpdateProperties('org.bluez.Adapter1', {'Discovering': dbus.Boolean(True)})
"#;

const STOP_DISCOVERY: &str = r#"
if not self.props['org.bluez.Adapter1']['Discovering']:
    raise dbus.exceptions.DBusException('No discovery started', name='org.bluez.Error.Failed')
self.UpdateProperties('org.bluez.Adapter1', {'Discovering': dbus.Boolean(False)})
"#;

const SET_DISCOVERY_FILTER: &str = r#"
if not self.props['org.bluez.Adapter1']['Powered']:
    raise dbus.exceptions.DBusException('Resource Not Ready', name='org.bluez.Error.NotReady')
kinds = {'UUIDs': dbus.Array, 'RSSI': dbus.Int16, 'Pathloss': dbus.UInt16,
         'Transport': dbus.String, 'DuplicateData': dbus.Boolean,
         'Discoverable': dbus.Boolean, 'Pattern': dbus.String}
for key, value in args[0].items():
    if not isinstance(value, kinds.get(key, ())) or (key == 'Transport' and value not in ('auto', 'bredr', 'le')):
        raise dbus.exceptions.DBusException('Invalid arguments in method call', name='org.bluez.Error.InvalidArguments')
"#;

/// Loads [`KITE_PY`] into the mock from the file named by its argument, in a
/// namespace of its own that also holds dbusmock's `root` object and
/// `objects` map.
const KITE_LOADER: &str = r#"
ns = {'__name__': 'kite_bluez', 'root': self, 'objects': objects}
with open(args[0], encoding='utf-8') as source:
    exec(compile(source.read(), args[0], 'exec'), ns)
"#;

/// BlueZ behaviour dbusmock's bluez5 template lacks: Device1 Connect and
/// Disconnect, GATT objects and their methods, AdvertisementMonitorManager1,
/// device and adapter removal that takes those along, and the test's
/// controls as `org.bluez.Mock.Kite*` methods on `/`. dbusmock's AddMethod
/// cannot answer a call later, so these are dbus-python methods put where
/// dbusmock looks methods up; Connect and RegisterMonitor answer from GLib
/// callbacks (async_callbacks), leaving the mock free to serve other calls.
const KITE_PY: &str = r#"import traceback

import dbus
import dbus.lowlevel
from gi.repository import GLib

# `root` (the mock's `/` object) and `objects` (dbusmock's path -> object
# map) are put here by the loader.

DEVICE = 'org.bluez.Device1'
ADAPTER = 'org.bluez.Adapter1'
SERVICE = 'org.bluez.GattService1'
CHAR = 'org.bluez.GattCharacteristic1'
MANAGER = 'org.bluez.AdvertisementMonitorManager1'
MONITOR = 'org.bluez.AdvertisementMonitor1'
OBJECT_MANAGER = 'org.freedesktop.DBus.ObjectManager'
PROPERTIES = 'org.freedesktop.DBus.Properties'
MOCK = 'org.bluez.Mock'

CONNECT_MS = 100   # a Connect that succeeds is answered after this
FAIL_MS = 200      # a Connect made to fail is answered after this
RESOLVE_MS = 50    # from the Connect reply to ServicesResolved
AD_MAX = 31        # BT_AD_MAX_DATA_LEN


def bluez_error(name, message):
    return dbus.exceptions.DBusException(message, name='org.bluez.Error.' + name)


def mock_error(message):
    return dbus.exceptions.DBusException(message, name='org.freedesktop.DBus.Mock.NameError')


def log(message):
    root.log('kite: ' + message)


def later(ms, fn, *args):
    def run():
        try:
            fn(*args)
        except Exception:
            log(traceback.format_exc())
        return False
    return GLib.timeout_add(ms, run)


def install(obj, interface, fn):
    '''Serves `fn` (a dbus.service.method) as interface.<its name> on obj,
    the way dbusmock's method lookup finds methods.'''
    obj.methods.setdefault(interface, {})[fn.__name__] = (
        fn._dbus_in_signature, fn._dbus_out_signature, '', fn)


def set_props(obj, interface, changes):
    '''Updates properties and emits ONE PropertiesChanged with exactly them.'''
    obj.props[interface].update(changes)
    obj.EmitSignal(PROPERTIES, 'PropertiesChanged', 'sa{sv}as',
                   [interface, dbus.Dictionary(changes, signature='sv'),
                    dbus.Array([], signature='s')])


def announce(path, interfaces):
    root.EmitSignal(OBJECT_MANAGER, 'InterfacesAdded', 'oa{sa{sv}}',
                    [dbus.ObjectPath(path),
                     {name: objects[path].props[name] for name in interfaces}])


def withdraw(path, interfaces):
    root.EmitSignal(OBJECT_MANAGER, 'InterfacesRemoved', 'oas',
                    [dbus.ObjectPath(path), dbus.Array(interfaces, signature='s')])


def tell(owner, path, member, signature='', args=()):
    '''A [noreply] call to a client's AdvertisementMonitor1, as BlueZ makes it.'''
    message = dbus.lowlevel.MethodCallMessage(owner, path, MONITOR, member)
    if signature:
        message.append(*args, signature=signature)
    message.set_no_reply(True)
    root.connection.send_message(message)


class Adapter:
    def __init__(self):
        self.in_flight = 0
        self.max_in_flight = 0
        self.apps = []


class Device:
    def __init__(self, path):
        self.path = path
        self.adapter = path.rsplit('/', 1)[0]
        self.services = []
        self.next_handle = 0x0010
        self.exported = False     # the GATT objects exist (BlueZ's cache)
        self.connect_calls = 0
        self.fail_next = 0
        self.pending = None       # (reply, error, GLib source) of the Connect in flight
        self.resolving = None     # GLib source of the service discovery to come


class Service:
    def __init__(self, device, uuid, handle):
        self.device = device
        self.uuid = uuid
        self.handle = handle
        self.path = '%s/service%04x' % (device.path, handle)
        self.chars = []


class Char:
    def __init__(self, service, uuid, value, flags, handle):
        self.device = service.device
        self.service = service
        self.uuid = uuid
        self.value = value
        self.flags = flags
        self.handle = handle
        self.path = '%s/char%04x' % (service.path, handle)
        self.read_calls = 0
        self.written = []
        self.sessions = {}        # notify sessions: client -> watch on its name

    def notifiable(self):
        return 'notify' in self.flags or 'indicate' in self.flags


adapters = {}
devices = {}
chars = {}


def adapter_state(path):
    return adapters.setdefault(str(path), Adapter())


def device_state(path):
    try:
        return devices[str(path)]
    except KeyError:
        raise mock_error('no device %s: appear() it first' % path) from None


def find_char(device, uuid):
    for service in device_state(device).services:
        for char in service.chars:
            if char.uuid == str(uuid).lower():
                return char
    raise mock_error('device %s has no characteristic %s: see gatt_service()' % (device, uuid))


def is_connected(device):
    obj = objects.get(device.path)
    return obj is not None and bool(obj.props[DEVICE].get('Connected', False))


# ---- org.bluez.Device1 ----------------------------------------------------

@dbus.service.method(DEVICE, in_signature='', out_signature='',
                     async_callbacks=('reply', 'error'))
def Connect(self, reply, error):
    device = devices[self.path]
    device.connect_calls += 1
    if device.pending is not None:
        error(bluez_error('InProgress', 'In Progress'))
        return
    if is_connected(device):
        reply()
        return
    adapter = adapter_state(device.adapter)
    adapter.in_flight += 1
    adapter.max_in_flight = max(adapter.max_in_flight, adapter.in_flight)
    if device.fail_next:
        device.fail_next -= 1
        source = later(FAIL_MS, connect_failed, device, 'le-connection-abort-by-local')
    else:
        source = later(CONNECT_MS, connect_succeeded, device)
    device.pending = (reply, error, source)


@dbus.service.method(DEVICE, in_signature='', out_signature='')
def Disconnect(self):
    device = devices[self.path]
    cancel_connect(device, 'br-connection-canceled')
    disconnected(device)


def settle(device):
    reply, error, _ = device.pending
    device.pending = None
    adapter_state(device.adapter).in_flight -= 1
    return reply, error


def connect_failed(device, reason):
    _, error = settle(device)
    error(bluez_error('Failed', reason))


def connect_succeeded(device):
    reply, _ = settle(device)
    set_props(objects[device.path], DEVICE, {'Connected': dbus.Boolean(True)})
    reply()
    device.resolving = later(RESOLVE_MS, services_resolved, device)


def services_resolved(device):
    device.resolving = None
    if not device.exported:
        device.exported = True
        for service in device.services:
            export_service(service)
    # BlueZ re-registers the notify sessions that outlived a disconnection.
    for service in device.services:
        for char in service.chars:
            if char.sessions:
                set_notifying(char, True)
    set_props(objects[device.path], DEVICE, {'ServicesResolved': dbus.Boolean(True)})


def cancel_connect(device, reason):
    if device.pending is not None:
        GLib.source_remove(device.pending[2])
        _, error = settle(device)
        error(bluez_error('Failed', reason))


def disconnected(device):
    if device.resolving is not None:
        GLib.source_remove(device.resolving)
        device.resolving = None
    if not is_connected(device):
        return
    obj = objects[device.path]
    changes = {'Connected': dbus.Boolean(False)}
    if obj.props[DEVICE].get('ServicesResolved', False):
        changes['ServicesResolved'] = dbus.Boolean(False)
    set_props(obj, DEVICE, changes)


# ---- GATT -----------------------------------------------------------------

def export_service(service):
    root.AddObject(service.path, SERVICE, {
        'UUID': dbus.String(service.uuid),
        'Device': dbus.ObjectPath(service.device.path),
        'Primary': dbus.Boolean(True),
        'Includes': dbus.Array([], signature='o'),
        'Handle': dbus.UInt16(service.handle),
    }, [])
    announce(service.path, [SERVICE])
    for char in service.chars:
        props = {
            'UUID': dbus.String(char.uuid),
            'Service': dbus.ObjectPath(service.path),
            'Flags': dbus.Array(char.flags, signature='s'),
            'Handle': dbus.UInt16(char.handle),
        }
        if char.notifiable():
            props['Notifying'] = dbus.Boolean(False)
        root.AddObject(char.path, CHAR, props, [])
        for method in (ReadValue, WriteValue, StartNotify, StopNotify):
            install(objects[char.path], CHAR, method)
        announce(char.path, [CHAR])


def unexport(device):
    '''The GATT objects go, characteristics before their service.'''
    for service in device.services:
        for char in service.chars:
            for watch in char.sessions.values():
                watch.cancel()
            char.sessions.clear()
            if char.path in objects:
                root.RemoveObject(char.path)
                withdraw(char.path, [CHAR])
        if service.path in objects:
            root.RemoveObject(service.path)
            withdraw(service.path, [SERVICE])
    device.exported = False


def set_notifying(char, on):
    obj = objects.get(char.path)
    if obj is not None and bool(obj.props[CHAR].get('Notifying', on)) != on:
        set_props(obj, CHAR, {'Notifying': dbus.Boolean(on)})


def cache(char):
    '''BlueZ learns the value (a read or a notification): PropertiesChanged
    with Value, even when it did not change.'''
    set_props(objects[char.path], CHAR, {'Value': dbus.Array(char.value, signature='y')})


def end_session(char, client):
    watch = char.sessions.pop(client, None)
    if watch is None:
        return
    watch.cancel()
    if not char.sessions:
        set_notifying(char, False)


@dbus.service.method(CHAR, in_signature='a{sv}', out_signature='ay')
def ReadValue(self, options):
    char = chars[self.path]
    char.read_calls += 1
    if not is_connected(char.device):
        raise bluez_error('Failed', 'Not connected')
    if 'read' not in char.flags:
        raise bluez_error('NotPermitted', 'Read not permitted')
    offset = int(options.get('offset', 0))
    if offset > len(char.value):
        raise bluez_error('InvalidArguments', 'Invalid offset')
    cache(char)
    return dbus.Array(char.value[offset:], signature='y')


@dbus.service.method(CHAR, in_signature='aya{sv}', out_signature='')
def WriteValue(self, value, options):
    char = chars[self.path]
    if not is_connected(char.device):
        raise bluez_error('Failed', 'Not connected')
    if not {'write', 'write-without-response', 'reliable-write'} & set(char.flags):
        raise bluez_error('NotSupported', 'Operation is not supported')
    char.written.append(bytes(value))
    log('%s written: %s' % (char.path, bytes(value).hex()))


@dbus.service.method(CHAR, in_signature='', out_signature='', sender_keyword='sender')
def StartNotify(self, sender):
    char = chars[self.path]
    if not char.notifiable():
        raise bluez_error('NotSupported', 'Operation is not supported')
    if sender not in char.sessions:
        # A session ends when its client leaves the bus, as in BlueZ.
        char.sessions[sender] = root.connection.watch_name_owner(
            sender, lambda owner: owner or end_session(char, sender))
    if is_connected(char.device):
        set_notifying(char, True)


@dbus.service.method(CHAR, in_signature='', out_signature='', sender_keyword='sender')
def StopNotify(self, sender):
    char = chars[self.path]
    if sender not in char.sessions:
        raise bluez_error('Failed', 'No notify session started')
    end_session(char, sender)


# ---- org.bluez.AdvertisementMonitorManager1 -------------------------------

class App:
    def __init__(self, owner, path):
        self.owner = owner
        self.path = path
        self.monitors = {}        # path -> (Type, [(start, AD type, content)])
        self.watches = []
        self.matches = []


def parse_monitor(props):
    '''(Type, patterns) if bluetoothd would accept the monitor, else None.'''
    if str(props.get('Type', '')) != 'or_patterns':
        return None
    patterns = []
    for pattern in props.get('Patterns', []):
        start, ad_type, content = int(pattern[0]), int(pattern[1]), bytes(pattern[2])
        if not content or start >= AD_MAX or start + len(content) > AD_MAX:
            return None
        if ad_type < 0x01 or (ad_type > 0x3d and ad_type != 0xff):
            return None
        patterns.append((start, ad_type, content))
    return ('or_patterns', patterns) if patterns else None


def monitor_added(app, path, interfaces, activate):
    path = str(path)
    if MONITOR not in interfaces or path in app.monitors:
        return False
    if path != app.path and not path.startswith(app.path.rstrip('/') + '/'):
        return False
    monitor = parse_monitor(interfaces[MONITOR])
    if monitor is None:
        log('invalid monitor %s of %s: Release()' % (path, app.owner))
        tell(app.owner, path, 'Release')
        return False
    app.monitors[path] = monitor
    if activate:
        tell(app.owner, path, 'Activate')
    return True


def monitor_removed(app, path, interfaces):
    if MONITOR in interfaces:
        app.monitors.pop(str(path), None)


def drop_app(adapter, app):
    if app in adapter.apps:
        adapter.apps.remove(app)
    for watch in app.watches:
        watch.cancel()
    for match in app.matches:
        match.remove()
    app.watches, app.matches = [], []


@dbus.service.method(MANAGER, in_signature='o', out_signature='', sender_keyword='sender',
                     async_callbacks=('reply', 'error'))
def RegisterMonitor(self, application, sender, reply, error):
    adapter = adapter_state(self.path)
    path = str(application)
    if any(app.owner == sender and app.path == path for app in adapter.apps):
        error(bluez_error('AlreadyExists', 'Already Exists'))
        return
    app = App(sender, path)
    adapter.apps.append(app)
    connection = root.connection
    app.watches.append(connection.watch_name_owner(
        sender, lambda owner: owner or drop_app(adapter, app)))
    app.matches.append(connection.add_signal_receiver(
        lambda p, interfaces: monitor_added(app, p, interfaces, True),
        'InterfacesAdded', OBJECT_MANAGER, sender, path))
    app.matches.append(connection.add_signal_receiver(
        lambda p, interfaces: monitor_removed(app, p, interfaces),
        'InterfacesRemoved', OBJECT_MANAGER, sender, path))

    # bluetoothd answers RegisterMonitor once it has the application's
    # objects, and activates the monitors after that.
    def listed(managed):
        found = [p for p in managed if monitor_added(app, p, managed[p], False)]
        reply()
        for p in found:
            tell(app.owner, p, 'Activate')

    def unlisted(e):
        log('GetManagedObjects on %s %s failed: %s' % (sender, path, e))
        reply()

    connection.call_async(sender, path, OBJECT_MANAGER, 'GetManagedObjects', '', (),
                          listed, unlisted)


@dbus.service.method(MANAGER, in_signature='o', out_signature='', sender_keyword='sender')
def UnregisterMonitor(self, application, sender):
    adapter = adapter_state(self.path)
    for app in list(adapter.apps):
        if app.owner == sender and app.path == str(application):
            drop_app(adapter, app)
            for path in app.monitors:
                tell(app.owner, path, 'Release')
            app.monitors.clear()
            return
    raise bluez_error('DoesNotExist', 'Does Not Exist')


# ---- removal, as bluetoothd does it ----------------------------------------

def forget(path):
    device = devices.get(path)
    if device is None:
        return
    cancel_connect(device, 'br-connection-canceled')
    disconnected(device)
    unexport(device)


@dbus.service.method(ADAPTER, in_signature='o', out_signature='')
def RemoveDevice(self, path):
    path = str(path)
    if path not in objects:
        raise mock_error('object %s does not exist' % path)
    forget(path)
    self.RemoveObject(path)
    withdraw(path, [DEVICE])


@dbus.service.method(MOCK, in_signature='s', out_signature='')
def RemoveAdapterWithDevices(self, name):
    adapter_path = '/org/bluez/' + name
    adapter = objects[adapter_path]
    for path in [p for p in objects if p.startswith(adapter_path + '/')]:
        if path not in objects:
            continue
        forget(path)
        interfaces = list(objects[path].props)
        adapter.RemoveObject(path)
        withdraw(path, interfaces)
    for app in list(adapter_state(adapter_path).apps):
        drop_app(adapter_state(adapter_path), app)
    interfaces = list(adapter.props)
    self.RemoveObject(adapter_path)
    withdraw(adapter_path, interfaces)


# ---- the test's controls, org.bluez.Mock.Kite* on / ------------------------

@dbus.service.method(MOCK, in_signature='o', out_signature='')
def KiteAdapter(self, path):
    install(objects[str(path)], ADAPTER, RemoveDevice)
    adapter_state(path)


@dbus.service.method(MOCK, in_signature='o', out_signature='')
def KiteDevice(self, path):
    path = str(path)
    devices.setdefault(path, Device(path))
    for method in (Connect, Disconnect):
        install(objects[path], DEVICE, method)


@dbus.service.method(MOCK, in_signature='osa(sayas)', out_signature='')
def KiteGattService(self, path, uuid, characteristics):
    device = device_state(path)
    service = Service(device, str(uuid).lower(), device.next_handle)
    handle = device.next_handle + 1
    for char_uuid, value, flags in characteristics:
        char = Char(service, str(char_uuid).lower(), bytes(value), [str(f) for f in flags], handle)
        # declaration, value, and a CCC descriptor when it can notify
        handle += 3 if char.notifiable() else 2
        service.chars.append(char)
        chars[char.path] = char
    device.next_handle = handle
    device.services.append(service)
    if device.exported:
        export_service(service)


@dbus.service.method(MOCK, in_signature='ou', out_signature='')
def KiteFailConnects(self, path, n):
    device_state(path).fail_next = int(n)


@dbus.service.method(MOCK, in_signature='o', out_signature='u')
def KiteConnectCalls(self, path):
    return device_state(path).connect_calls


@dbus.service.method(MOCK, in_signature='o', out_signature='u')
def KiteMaxConnectsInFlight(self, path):
    return adapter_state(path).max_in_flight


@dbus.service.method(MOCK, in_signature='os', out_signature='u')
def KiteReadCalls(self, path, uuid):
    return find_char(path, uuid).read_calls


@dbus.service.method(MOCK, in_signature='osay', out_signature='')
def KiteSetValue(self, path, uuid, value):
    char = find_char(path, uuid)
    char.value = bytes(value)
    if char.sessions and is_connected(char.device) and char.path in objects:
        cache(char)


@dbus.service.method(MOCK, in_signature='os', out_signature='b')
def KiteNotifying(self, path, uuid):
    char = find_char(path, uuid)
    return bool(char.sessions) and is_connected(char.device)


@dbus.service.method(MOCK, in_signature='o', out_signature='')
def KiteDropConnection(self, path):
    device = device_state(path)
    cancel_connect(device, 'le-connection-abort-by-remote')
    disconnected(device)


@dbus.service.method(MOCK, in_signature='o', out_signature='')
def KiteOfferMonitors(self, path):
    adapter = objects[str(path)]
    adapter.props[MANAGER] = {
        'SupportedMonitorTypes': dbus.Array(['or_patterns'], signature='s'),
        'SupportedFeatures': dbus.Array([], signature='s'),
    }
    for method in (RegisterMonitor, UnregisterMonitor):
        install(adapter, MANAGER, method)
    announce(str(path), [MANAGER])


@dbus.service.method(MOCK, in_signature='o', out_signature='a(sa(yyay))')
def KiteMonitors(self, path):
    return [(kind, [(start, ad_type, dbus.Array(content, signature='y'))
                    for start, ad_type, content in patterns])
            for app in adapter_state(path).apps
            for kind, patterns in app.monitors.values()]


@dbus.service.method(MOCK, in_signature='oo', out_signature='')
def KiteMonitorFound(self, path, device):
    for app in adapter_state(path).apps:
        for monitor in app.monitors:
            tell(app.owner, monitor, 'DeviceFound', 'o', [dbus.ObjectPath(device)])


for method in (RemoveAdapterWithDevices, KiteAdapter, KiteDevice, KiteGattService,
               KiteFailConnects, KiteConnectCalls, KiteMaxConnectsInFlight, KiteReadCalls,
               KiteSetValue, KiteNotifying, KiteDropConnection, KiteOfferMonitors,
               KiteMonitors, KiteMonitorFound):
    install(root, MOCK, method)
"#;

/// Advertisement contents as BlueZ exposes them on org.bluez.Device1.
#[derive(Clone, Debug, Default)]
pub struct Advert {
    /// `RSSI` (`n`), sent as given (bluetoothd would leave out a 0).
    pub rssi: i16,
    /// `ManufacturerData` (`a{qv}`, each variant `ay`): company id and bytes.
    pub manufacturer: Vec<(u16, Vec<u8>)>,
    /// `ServiceData` (`a{sv}`, each variant `ay`), keyed by 128-bit UUID string.
    pub service: Vec<(String, Vec<u8>)>,
    /// `UUIDs` (`as`): advertised service UUIDs, 128-bit strings.
    pub uuids: Vec<String>,
}

/// A GATT characteristic of a connectable sensor (see [`Bluez::gatt_service`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Characteristic {
    /// `UUID`, a 128-bit string such as
    /// "00002a6e-0000-1000-8000-00805f9b34fb" (stored lower-case).
    pub uuid: String,
    /// What the sensor holds: ReadValue returns it.
    pub value: Vec<u8>,
    /// `Flags` as BlueZ names them: "read" allows ReadValue, "notify" or
    /// "indicate" allow StartNotify, "write" or "write-without-response"
    /// allow WriteValue.
    pub flags: Vec<String>,
}

/// A private D-Bus bus with the BlueZ mock owning `org.bluez` on it. Both
/// processes are killed when this is dropped.
pub struct Bluez {
    connection: Connection,
    dir: PathBuf,
    _mock: Peer,
    _daemon: Peer,
}

impl Bluez {
    /// Starts a private bus (socket `dir/bus`, config and logs beside it)
    /// and the bluez5 mock on it; returns once `org.bluez` is owned and the
    /// mock answers.
    pub async fn start(dir: &Path) -> Self {
        for (path, package) in [(DBUS_DAEMON, "dbus-daemon"), (PYTHON, "python3")] {
            assert!(
                Path::new(path).exists(),
                "{path} not found: install {package} with `.ci/install-peers`"
            );
        }
        let socket = dir.join("bus");
        let _ = std::fs::remove_file(&socket);
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .unwrap();
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .unwrap()
        };
        let daemon_log = log("dbus-daemon.log");
        let daemon = Command::new(DBUS_DAEMON)
            .arg("--nofork")
            .arg(format!("--config-file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(daemon_log.try_clone().unwrap())
            .stderr(daemon_log)
            .spawn()
            .expect("start dbus-daemon");
        let daemon = Peer(daemon);
        let address = format!("unix:path={}", socket.display());
        let connection = connect(&address, dir).await;

        let mock_log = log("bluez-mock.log");
        let mock = Command::new(PYTHON)
            .args(["-m", "dbusmock", "--template", "bluez5", "-s"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdin(Stdio::null())
            .stdout(mock_log.try_clone().unwrap())
            .stderr(mock_log)
            .spawn()
            .expect("start python3 -m dbusmock");
        let mut mock = Peer(mock);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let owned: bool = call(
                &connection,
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                &(BLUEZ,),
            )
            .await
            .body()
            .deserialize()
            .unwrap();
            if owned {
                break;
            }
            if let Some(status) = mock.0.try_wait().unwrap() {
                panic!(
                    "the BlueZ mock exited ({status}): {}\n(install python3-dbusmock with `.ci/install-peers`)",
                    std::fs::read_to_string(dir.join("bluez-mock.log")).unwrap_or_default()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the BlueZ mock did not take org.bluez within {PATIENCE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The mock claims the name before loading its template, but serves
        // calls only once it is loaded, so this one waits for it.
        call(
            &connection,
            BLUEZ,
            "/",
            MOCK,
            "AddMethod",
            &(BLUEZ_MOCK, "UpdateDevice", "oa{sv}", "", UPDATE_DEVICE),
        )
        .await;
        call(
            &connection,
            BLUEZ,
            "/",
            MOCK,
            "AddMethod",
            &(BLUEZ_MOCK, "KiteLoad", "s", "", KITE_LOADER),
        )
        .await;
        let kite_py = dir.join("kite_bluez.py");
        std::fs::write(&kite_py, KITE_PY).unwrap();
        let kite_py = kite_py.to_str().expect("a UTF-8 directory");
        call(&connection, BLUEZ, "/", BLUEZ_MOCK, "KiteLoad", &(kite_py,)).await;
        Self {
            connection,
            dir: dir.to_path_buf(),
            _mock: mock,
            _daemon: daemon,
        }
    }

    /// The address for DBUS_SYSTEM_BUS_ADDRESS, e.g. "unix:path=/tmp/x/bus".
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.join("bus").display())
    }

    /// Adds a powered, non-discovering adapter `/org/bluez/{adapter}` and
    /// announces it with InterfacesAdded. The name must end in a digit, as
    /// "hci0" does: the template derives the adapter's address from it.
    pub async fn add_adapter(&self, adapter: &str) {
        self.call("/", BLUEZ_MOCK, "AddAdapter", &(adapter, "kite-test"))
            .await;
        let methods = [
            ("StartDiscovery", "", "", START_DISCOVERY),
            ("StopDiscovery", "", "", STOP_DISCOVERY),
            ("SetDiscoveryFilter", "a{sv}", "", SET_DISCOVERY_FILTER),
        ];
        self.call(
            &adapter_path(adapter),
            MOCK,
            "AddMethods",
            &(ADAPTER, &methods[..]),
        )
        .await;
        self.call(
            "/",
            BLUEZ_MOCK,
            "KiteAdapter",
            &(path(&adapter_path(adapter)),),
        )
        .await;
    }

    /// The adapter goes away as when it is unplugged: InterfacesRemoved for
    /// each of its devices, then for the adapter.
    pub async fn remove_adapter(&self, adapter: &str) {
        self.call("/", BLUEZ_MOCK, "RemoveAdapterWithDevices", &(adapter,))
            .await;
    }

    /// Sets org.bluez.Adapter1.Powered and emits one PropertiesChanged; when
    /// powering off a discovering adapter, with Discovering=false in it, as
    /// BlueZ does.
    pub async fn set_powered(&self, adapter: &str, on: bool) {
        let mut changes = HashMap::from([("Powered", Value::from(on))]);
        if !on && self.discovering(adapter).await {
            changes.insert("Discovering", Value::from(false));
        }
        self.call(
            &adapter_path(adapter),
            MOCK,
            "UpdateProperties",
            &(ADAPTER, changes),
        )
        .await;
    }

    /// Adapter1.Discovering as the mock holds it.
    pub async fn discovering(&self, adapter: &str) -> bool {
        let value = self
            .property(&adapter_path(adapter), ADAPTER, "Discovering")
            .await;
        bool::try_from(value).expect("Discovering is a boolean")
    }

    /// How many times StartDiscovery was called on the adapter since it was
    /// added, failed calls included (from dbusmock's call log).
    pub async fn start_discovery_calls(&self, adapter: &str) -> usize {
        self.calls(adapter, "StartDiscovery").await.len()
    }

    /// The last filter passed to SetDiscoveryFilter (even if rejected), as
    /// (key, value-as-string) pairs sorted by key, e.g.
    /// `[("DuplicateData", "true"), ("Transport", "le")]`; empty if never set.
    pub async fn discovery_filter(&self, adapter: &str) -> Vec<(String, String)> {
        let calls = self.calls(adapter, "SetDiscoveryFilter").await;
        let Some(args) = calls.last() else {
            return Vec::new();
        };
        let Value::Dict(filter) = unwrap(&args[0]) else {
            panic!("SetDiscoveryFilter was called with {:?}", args[0]);
        };
        let mut pairs: Vec<(String, String)> = filter
            .iter()
            .map(|(key, value)| (plain(key), plain(value)))
            .collect();
        pairs.sort();
        pairs
    }

    /// A device is discovered: its object appears with its first
    /// advertisement in it, in ONE InterfacesAdded whose Device1 properties
    /// already carry RSSI, UUIDs and the non-empty ManufacturerData and
    /// ServiceData, besides Address (upper case), AddressType "public",
    /// Alias, Adapter, and Paired, Bonded, Trusted, Blocked, LegacyPairing,
    /// Connected and ServicesResolved all false. Without `name` there is no
    /// Name property and the Alias is the address with '-' for ':', as BlueZ
    /// shows an unnamed device.
    pub async fn appear(&self, adapter: &str, address: &str, name: Option<&str>, advert: &Advert) {
        let path = device_path(adapter, address);
        let properties = || {
            let address = address.to_uppercase();
            let mut props = HashMap::from([
                ("AddressType", Value::from("public")),
                (
                    "Alias",
                    Value::from(name.map_or(address.replace(':', "-"), str::to_string)),
                ),
                ("Address", Value::from(address)),
                (
                    "Adapter",
                    Value::from(ObjectPath::try_from(adapter_path(adapter)).unwrap()),
                ),
                ("Paired", Value::from(false)),
                ("Bonded", Value::from(false)),
                ("Trusted", Value::from(false)),
                ("Blocked", Value::from(false)),
                ("LegacyPairing", Value::from(false)),
                ("Connected", Value::from(false)),
                ("ServicesResolved", Value::from(false)),
                ("UUIDs", Value::from(advert.uuids.clone())),
                ("RSSI", Value::from(advert.rssi)),
            ]);
            if let Some(name) = name {
                props.insert("Name", Value::from(name.to_string()));
            }
            props.extend(advert_data(advert));
            props
        };
        self.call(
            "/",
            MOCK,
            "AddObject",
            &(&path, DEVICE, properties(), NO_METHODS),
        )
        .await;
        self.call("/", BLUEZ_MOCK, "KiteDevice", &(self::path(&path),))
            .await;
        // dbusmock's AddObject announces nothing; send what bluetoothd does.
        let interfaces = HashMap::from([(DEVICE, properties())]);
        let args = vec![
            Value::from(ObjectPath::try_from(path.as_str()).unwrap()),
            Value::from(interfaces),
        ];
        self.call(
            "/",
            MOCK,
            "EmitSignal",
            &(OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", args),
        )
        .await;
    }

    /// A later advertisement: updates the device's properties and emits ONE
    /// PropertiesChanged on org.bluez.Device1 with RSSI and the non-empty
    /// ManufacturerData/ServiceData, as BlueZ with DuplicateData=true does on
    /// every advertisement even when they are unchanged; UUIDs too when the
    /// advertisement names ones the device did not have (BlueZ adds them).
    pub async fn advertise(&self, adapter: &str, address: &str, advert: &Advert) {
        let path = device_path(adapter, address);
        let mut changes = advert_data(advert);
        changes.insert("RSSI", Value::from(advert.rssi));
        let mut uuids: Vec<String> = Vec::try_from(self.property(&path, DEVICE, "UUIDs").await)
            .expect("UUIDs is an array of strings");
        let known = uuids.len();
        for uuid in &advert.uuids {
            if !uuids.contains(uuid) {
                uuids.push(uuid.clone());
            }
        }
        if uuids.len() > known {
            changes.insert("UUIDs", Value::from(uuids));
        }
        self.update_device(&path, changes).await;
    }

    /// Only the RSSI changes (one PropertiesChanged with RSSI alone).
    pub async fn rssi(&self, adapter: &str, address: &str, rssi: i16) {
        let changes = HashMap::from([("RSSI", Value::from(rssi))]);
        self.update_device(&device_path(adapter, address), changes)
            .await;
    }

    /// The device object goes away (Adapter1.RemoveDevice, then
    /// InterfacesRemoved), as when BlueZ forgets a device.
    pub async fn disappear(&self, adapter: &str, address: &str) {
        let device = ObjectPath::try_from(device_path(adapter, address)).unwrap();
        self.call(&adapter_path(adapter), ADAPTER, "RemoveDevice", &(device,))
            .await;
    }

    /// Gives the device (already [`appear`](Self::appear)ed) a primary GATT
    /// service with these characteristics. Its objects are created when the
    /// device is first connected (after Connect answers, before
    /// ServicesResolved=true), then kept across disconnections as BlueZ's GATT
    /// cache keeps them; if they already exist, the service's objects are
    /// created at once. Paths use handles as bluetoothd does: the first
    /// service is `{device}/service0010`, its characteristics
    /// `service0010/char0011`, then +2 per characteristic (+3 after one that
    /// can notify or indicate). UUIDs are lower-cased.
    pub async fn gatt_service(
        &self,
        adapter: &str,
        address: &str,
        service_uuid: &str,
        characteristics: &[Characteristic],
    ) {
        let characteristics: Vec<(&str, &[u8], &[String])> = characteristics
            .iter()
            .map(|c| (c.uuid.as_str(), c.value.as_slice(), c.flags.as_slice()))
            .collect();
        let device = device_path(adapter, address);
        self.call(
            "/",
            BLUEZ_MOCK,
            "KiteGattService",
            &(path(&device), service_uuid, characteristics),
        )
        .await;
    }

    /// The next `n` Connect calls that start a connection to the device fail,
    /// each after ~200 ms, with `org.bluez.Error.Failed`
    /// "le-connection-abort-by-local" (replaces any count still pending).
    pub async fn fail_connects(&self, adapter: &str, address: &str, n: u32) {
        let device = device_path(adapter, address);
        self.call("/", BLUEZ_MOCK, "KiteFailConnects", &(path(&device), n))
            .await;
    }

    /// Device1.Connect calls received for the device: successful, failed,
    /// refused with InProgress, or answered at once because it was connected.
    pub async fn connect_calls(&self, adapter: &str, address: &str) -> usize {
        let device = device_path(adapter, address);
        self.count("KiteConnectCalls", &(path(&device),)).await
    }

    /// The most connection attempts that were in flight at once across all
    /// the adapter's devices. An attempt is in flight from the Connect call
    /// that starts it until its answer (~100 ms when it succeeds, ~200 ms when
    /// made to fail); Connects refused with InProgress or answered at once
    /// (already connected) do not count.
    pub async fn max_connects_in_flight(&self, adapter: &str) -> usize {
        let adapter = adapter_path(adapter);
        self.count("KiteMaxConnectsInFlight", &(path(&adapter),))
            .await
    }

    /// ReadValue calls received for the device's characteristic (the first
    /// with that UUID), failed ones included.
    pub async fn read_calls(&self, adapter: &str, address: &str, char_uuid: &str) -> usize {
        let device = device_path(adapter, address);
        self.count("KiteReadCalls", &(path(&device), char_uuid))
            .await
    }

    /// The sensor's characteristic now holds `value`: later ReadValue calls
    /// return it and, if a client has a notify session and the device is
    /// connected, BlueZ's notification is emitted: one PropertiesChanged on
    /// org.bluez.GattCharacteristic1 with Value alone (even if unchanged).
    pub async fn set_value(&self, adapter: &str, address: &str, char_uuid: &str, value: &[u8]) {
        let device = device_path(adapter, address);
        self.call(
            "/",
            BLUEZ_MOCK,
            "KiteSetValue",
            &(path(&device), char_uuid, value),
        )
        .await;
    }

    /// Whether notifications flow: some client has a notify session on the
    /// characteristic (StartNotify, not stopped, client still on the bus) and
    /// the device is connected.
    pub async fn notifying(&self, adapter: &str, address: &str, char_uuid: &str) -> bool {
        let device = device_path(adapter, address);
        self.call(
            "/",
            BLUEZ_MOCK,
            "KiteNotifying",
            &(path(&device), char_uuid),
        )
        .await
        .body()
        .deserialize()
        .expect("KiteNotifying answers b")
    }

    /// The device drops the connection: one PropertiesChanged on Device1 with
    /// Connected=false, and ServicesResolved=false if it was true. Notify
    /// sessions outlive it, as in BlueZ, and resume on the next connection. A
    /// Connect in flight fails instead ("le-connection-abort-by-remote").
    pub async fn drop_connection(&self, adapter: &str, address: &str) {
        let device = device_path(adapter, address);
        self.call("/", BLUEZ_MOCK, "KiteDropConnection", &(path(&device),))
            .await;
    }

    /// Device1.Connected as the mock holds it.
    pub async fn connected(&self, adapter: &str, address: &str) -> bool {
        let value = self
            .property(&device_path(adapter, address), DEVICE, "Connected")
            .await;
        bool::try_from(value).expect("Connected is a boolean")
    }

    /// Gives the adapter org.bluez.AdvertisementMonitorManager1
    /// (SupportedMonitorTypes ["or_patterns"], SupportedFeatures []) and
    /// announces it with InterfacesAdded for the adapter's path. Call it right
    /// after [`add_adapter`](Self::add_adapter), before the client looks.
    ///
    /// RegisterMonitor(o) acts as bluetoothd's: it calls GetManagedObjects
    /// on the caller at that path and answers only once that call is
    /// answered (a client must serve its ObjectManager while it waits), then
    /// calls Activate() on each valid AdvertisementMonitor1 under the path.
    /// A monitor is valid with Type "or_patterns" and at least one pattern
    /// whose content is 1..=31 bytes, fitting in 31 from its start, with an
    /// AD type in 0x01..=0x3d or 0xff; an invalid one gets Release() and is
    /// not kept. Monitors exported later (InterfacesAdded from the caller)
    /// are taken and activated too. UnregisterMonitor(o) calls Release() on
    /// each; a registration ends when its client leaves the bus. Errors:
    /// AlreadyExists (same client and path twice), DoesNotExist.
    pub async fn offer_monitors(&self, adapter: &str) {
        let adapter = adapter_path(adapter);
        self.call("/", BLUEZ_MOCK, "KiteOfferMonitors", &(path(&adapter),))
            .await;
    }

    /// The monitors of current registrations, in registration order: Type and
    /// patterns as (start position, AD type, content).
    pub async fn monitors(&self, adapter: &str) -> Vec<(String, Vec<(u8, u8, Vec<u8>)>)> {
        let adapter = adapter_path(adapter);
        self.call("/", BLUEZ_MOCK, "KiteMonitors", &(path(&adapter),))
            .await
            .body()
            .deserialize()
            .expect("KiteMonitors answers a(sa(yyay))")
    }

    /// Calls DeviceFound(o device) ([noreply], as bluetoothd) on every
    /// registered monitor of the adapter, whatever its patterns. The device
    /// object is not created: [`appear`](Self::appear) it first, as
    /// bluetoothd would have.
    pub async fn monitor_found(&self, adapter: &str, address: &str) {
        let adapter_path = adapter_path(adapter);
        let device = device_path(adapter, address);
        self.call(
            "/",
            BLUEZ_MOCK,
            "KiteMonitorFound",
            &(path(&adapter_path), path(&device)),
        )
        .await;
    }

    async fn count<B>(&self, method: &str, body: &B) -> usize
    where
        B: Serialize + DynamicType,
    {
        let n: u32 = self
            .call("/", BLUEZ_MOCK, method, body)
            .await
            .body()
            .deserialize()
            .unwrap_or_else(|e| panic!("{method} answers u: {e}"));
        n as usize
    }

    async fn update_device(&self, path: &str, changes: HashMap<&str, Value<'_>>) {
        let path = ObjectPath::try_from(path).unwrap();
        self.call("/", BLUEZ_MOCK, "UpdateDevice", &(path, changes))
            .await;
    }

    async fn property(&self, path: &str, interface: &str, name: &str) -> OwnedValue {
        self.call(path, PROPERTIES, "Get", &(interface, name))
            .await
            .body()
            .deserialize()
            .unwrap_or_else(|e| panic!("Get {interface}.{name} on {path}: {e}"))
    }

    /// The arguments of each call of `method` on the adapter, oldest first.
    async fn calls(&self, adapter: &str, method: &str) -> Vec<Vec<OwnedValue>> {
        let calls: Vec<(u64, Vec<OwnedValue>)> = self
            .call(&adapter_path(adapter), MOCK, "GetMethodCalls", &(method,))
            .await
            .body()
            .deserialize()
            .expect("GetMethodCalls answers a(tav)");
        calls.into_iter().map(|(_, args)| args).collect()
    }

    async fn call<B>(&self, path: &str, interface: &str, method: &str, body: &B) -> zbus::Message
    where
        B: Serialize + DynamicType,
    {
        call(&self.connection, BLUEZ, path, interface, method, body).await
    }
}

const NO_METHODS: &[(&str, &str, &str, &str)] = &[];

fn path(path: &str) -> ObjectPath<'_> {
    ObjectPath::try_from(path).unwrap_or_else(|e| panic!("{path} is no object path: {e}"))
}

fn adapter_path(adapter: &str) -> String {
    format!("/org/bluez/{adapter}")
}

/// `/org/bluez/{adapter}/dev_AA_BB_CC_DD_EE_FF`, as bluetoothd names devices.
fn device_path(adapter: &str, address: &str) -> String {
    format!(
        "/org/bluez/{adapter}/dev_{}",
        address.replace(':', "_").to_uppercase()
    )
}

/// ManufacturerData and ServiceData, each only when the advertisement has some.
fn advert_data(advert: &Advert) -> HashMap<&'static str, Value<'static>> {
    let mut data = HashMap::new();
    if !advert.manufacturer.is_empty() {
        let manufacturer: HashMap<u16, Value> = advert
            .manufacturer
            .iter()
            .map(|(id, bytes)| (*id, Value::from(bytes.clone())))
            .collect();
        data.insert("ManufacturerData", Value::from(manufacturer));
    }
    if !advert.service.is_empty() {
        let service: HashMap<String, Value> = advert
            .service
            .iter()
            .map(|(uuid, bytes)| (uuid.clone(), Value::from(bytes.clone())))
            .collect();
        data.insert("ServiceData", Value::from(service));
    }
    data
}

async fn connect(address: &str, dir: &Path) -> Connection {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let socket = dir.join("bus");
    wait_until("dbus-daemon created its socket", || socket.exists()).await;
    loop {
        match zbus::connection::Builder::address(address)
            .unwrap()
            .build()
            .await
        {
            Ok(connection) => return connection,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "cannot connect to the private bus at {address}: {e}\n{}",
                std::fs::read_to_string(dir.join("dbus-daemon.log")).unwrap_or_default()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call<B>(
    connection: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
) -> zbus::Message
where
    B: Serialize + DynamicType,
{
    connection
        .call_method(Some(destination), path, Some(interface), method, body)
        .await
        .unwrap_or_else(|e| panic!("{interface}.{method} on {destination} {path}: {e}"))
}

/// The value inside any number of variants.
fn unwrap<'a>(value: &'a Value<'a>) -> &'a Value<'a> {
    match value {
        Value::Value(inner) => unwrap(inner),
        other => other,
    }
}

/// A filter value as text: `le`, `true`, `-70`, `[a, b]`.
fn plain(value: &Value) -> String {
    match unwrap(value) {
        Value::Str(s) => s.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::I16(n) => n.to_string(),
        Value::U16(n) => n.to_string(),
        Value::I32(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(plain).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::future::poll_fn;
    use std::pin::Pin;

    use zbus::export::futures_core::Stream;
    use zbus::message::Type;
    use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
    use zbus::{Connection, MatchRule, Message, MessageStream};

    use super::*;

    const SENSOR: &str = "c4:7c:8d:6a:01:02";
    const SENSOR_PATH: &str = "/org/bluez/hci0/dev_C4_7C_8D_6A_01_02";
    const BEACON: &str = "D0:00:00:00:00:0B";
    const BEACON_PATH: &str = "/org/bluez/hci0/dev_D0_00_00_00_00_0B";
    const ENVIRONMENTAL: &str = "0000181a-0000-1000-8000-00805f9b34fb";
    const TEMPERATURE: &str = "00002a6e-0000-1000-8000-00805f9b34fb";
    const HUMIDITY: &str = "00002a6f-0000-1000-8000-00805f9b34fb";
    const SERVICE_PATH: &str = "/org/bluez/hci0/dev_C4_7C_8D_6A_01_02/service0010";
    const TEMPERATURE_PATH: &str = "/org/bluez/hci0/dev_C4_7C_8D_6A_01_02/service0010/char0011";
    const HUMIDITY_PATH: &str = "/org/bluez/hci0/dev_C4_7C_8D_6A_01_02/service0010/char0013";
    const GATT_SERVICE: &str = "org.bluez.GattService1";
    const GATT_CHARACTERISTIC: &str = "org.bluez.GattCharacteristic1";
    const MONITOR_MANAGER: &str = "org.bluez.AdvertisementMonitorManager1";

    type Interfaces = HashMap<String, HashMap<String, OwnedValue>>;

    /// BlueZ's signals as a client subscribed to everything from `org.bluez` sees them.
    struct Signals(MessageStream);

    impl Signals {
        async fn subscribe(client: &Connection) -> Self {
            let rule = MatchRule::builder()
                .msg_type(Type::Signal)
                .sender(BLUEZ)
                .unwrap()
                .build();
            Self(
                MessageStream::for_match_rule(rule, client, None)
                    .await
                    .unwrap(),
            )
        }

        /// The next signal, skipping dbusmock's own MethodCalled.
        async fn next(&mut self) -> Message {
            loop {
                let message = tokio::time::timeout(
                    PATIENCE,
                    poll_fn(|cx| Pin::new(&mut self.0).poll_next(cx)),
                )
                .await
                .expect("a signal from org.bluez")
                .expect("the bus is up")
                .unwrap();
                let header = message.header();
                if header.interface().map(|i| i.as_str()) != Some(MOCK) {
                    return message;
                }
            }
        }

        /// The next signal, which must be `interface.member` from `path`.
        async fn expect(&mut self, path: &str, interface: &str, member: &str) -> Message {
            let message = self.next().await;
            let header = message.header();
            assert_eq!(
                (
                    header.path().map(|p| p.as_str()),
                    header.interface().map(|i| i.as_str()),
                    header.member().map(|m| m.as_str()),
                ),
                (Some(path), Some(interface), Some(member)),
                "unexpected signal {message:?}"
            );
            drop(header);
            message
        }

        async fn interfaces_added(&mut self) -> (String, HashMap<String, OwnedValue>) {
            let message = self.expect("/", OBJECT_MANAGER, "InterfacesAdded").await;
            assert_eq!(
                message.body().signature().to_string_no_parens(),
                "oa{sa{sv}}"
            );
            let (path, mut interfaces): (
                OwnedObjectPath,
                HashMap<String, HashMap<String, OwnedValue>>,
            ) = message.body().deserialize().unwrap();
            let device = interfaces.remove(DEVICE).expect("Device1 properties");
            assert!(interfaces.is_empty(), "{interfaces:?}");
            (path.to_string(), device)
        }

        /// The next signal, which must be InterfacesAdded (for any interfaces).
        async fn added(&mut self) -> (String, Interfaces) {
            let message = self.expect("/", OBJECT_MANAGER, "InterfacesAdded").await;
            assert_eq!(
                message.body().signature().to_string_no_parens(),
                "oa{sa{sv}}"
            );
            let (path, interfaces): (OwnedObjectPath, Interfaces) =
                message.body().deserialize().unwrap();
            (path.to_string(), interfaces)
        }

        async fn interfaces_removed(&mut self) -> (String, Vec<String>) {
            let message = self.expect("/", OBJECT_MANAGER, "InterfacesRemoved").await;
            assert_eq!(message.body().signature().to_string_no_parens(), "oas");
            let (path, interfaces): (OwnedObjectPath, Vec<String>) =
                message.body().deserialize().unwrap();
            (path.to_string(), interfaces)
        }

        async fn properties_changed(
            &mut self,
            path: &str,
            interface: &str,
        ) -> HashMap<String, OwnedValue> {
            let message = self.expect(path, PROPERTIES, "PropertiesChanged").await;
            assert_eq!(message.body().signature().to_string_no_parens(), "sa{sv}as");
            let (changed_on, changed, invalidated): (
                String,
                HashMap<String, OwnedValue>,
                Vec<String>,
            ) = message.body().deserialize().unwrap();
            assert_eq!(changed_on, interface);
            assert!(invalidated.is_empty());
            changed
        }
    }

    fn keys(props: &HashMap<String, OwnedValue>) -> BTreeSet<&str> {
        props.keys().map(String::as_str).collect()
    }

    fn signature(value: &OwnedValue) -> String {
        value.value_signature().to_string()
    }

    /// ManufacturerData, checked to be exactly BlueZ's `a{qv}` with `ay` inside.
    fn manufacturer(props: &HashMap<String, OwnedValue>) -> Vec<(u16, Vec<u8>)> {
        let data = &props["ManufacturerData"];
        assert_eq!(signature(data), "a{qv}");
        let Value::Dict(dict) = &**data else {
            panic!("ManufacturerData is {data:?}")
        };
        dict.iter()
            .map(|(id, bytes)| {
                let (Value::U16(id), Value::Value(bytes)) = (id, bytes) else {
                    panic!("ManufacturerData entry {id:?}: {bytes:?}")
                };
                assert_eq!(bytes.value_signature().to_string(), "ay");
                (*id, Vec::try_from(bytes.try_clone().unwrap()).unwrap())
            })
            .collect()
    }

    /// ServiceData, checked to be exactly BlueZ's `a{sv}` with `ay` inside.
    fn service(props: &HashMap<String, OwnedValue>) -> Vec<(String, Vec<u8>)> {
        let data = &props["ServiceData"];
        assert_eq!(signature(data), "a{sv}");
        let Value::Dict(dict) = &**data else {
            panic!("ServiceData is {data:?}")
        };
        dict.iter()
            .map(|(uuid, bytes)| {
                let (Value::Str(uuid), Value::Value(bytes)) = (uuid, bytes) else {
                    panic!("ServiceData entry {uuid:?}: {bytes:?}")
                };
                assert_eq!(bytes.value_signature().to_string(), "ay");
                (
                    uuid.to_string(),
                    Vec::try_from(bytes.try_clone().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    fn rssi(props: &HashMap<String, OwnedValue>) -> i16 {
        assert_eq!(signature(&props["RSSI"]), "n");
        i16::try_from(&props["RSSI"]).unwrap()
    }

    fn string(props: &HashMap<String, OwnedValue>, name: &str) -> String {
        String::try_from(props[name].try_clone().unwrap()).unwrap()
    }

    fn boolean(props: &HashMap<String, OwnedValue>, name: &str) -> bool {
        bool::try_from(&props[name]).unwrap()
    }

    async fn adapter_call<B: Serialize + DynamicType>(
        client: &Connection,
        method: &str,
        body: &B,
    ) -> zbus::Result<Message> {
        client
            .call_method(Some(BLUEZ), "/org/bluez/hci0", Some(ADAPTER), method, body)
            .await
    }

    async fn client_of(bluez: &Bluez) -> Connection {
        zbus::connection::Builder::address(bluez.bus_address().as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }

    async fn object_call<B: Serialize + DynamicType>(
        client: &Connection,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<Message> {
        client
            .call_method(Some(BLUEZ), path, Some(interface), method, body)
            .await
    }

    async fn connect_device(client: &Connection, path: &str) -> zbus::Result<Message> {
        object_call(client, path, DEVICE, "Connect", &()).await
    }

    async fn read_value(client: &Connection, path: &str) -> zbus::Result<Vec<u8>> {
        let options: HashMap<&str, Value> = HashMap::new();
        let reply =
            object_call(client, path, GATT_CHARACTERISTIC, "ReadValue", &(options,)).await?;
        Ok(reply.body().deserialize().unwrap())
    }

    async fn managed_objects(client: &Connection) -> HashMap<OwnedObjectPath, Interfaces> {
        object_call(client, "/", OBJECT_MANAGER, "GetManagedObjects", &())
            .await
            .unwrap()
            .body()
            .deserialize()
            .unwrap()
    }

    /// The D-Bus error name and message of a failed call.
    fn error(result: zbus::Result<Message>) -> (String, String) {
        match result {
            Err(zbus::Error::MethodError(name, message, _)) => {
                (name.to_string(), message.unwrap_or_default())
            }
            other => panic!("expected a D-Bus error, got {other:?}"),
        }
    }

    fn bytes(props: &HashMap<String, OwnedValue>, name: &str) -> Vec<u8> {
        assert_eq!(signature(&props[name]), "ay");
        Vec::try_from(props[name].try_clone().unwrap()).unwrap()
    }

    fn strings(props: &HashMap<String, OwnedValue>, name: &str) -> Vec<String> {
        assert_eq!(signature(&props[name]), "as");
        Vec::try_from(props[name].try_clone().unwrap()).unwrap()
    }

    fn object_path(props: &HashMap<String, OwnedValue>, name: &str) -> String {
        assert_eq!(signature(&props[name]), "o");
        OwnedObjectPath::try_from(props[name].try_clone().unwrap())
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn behaves_like_bluez_to_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let bluez = Bluez::start(dir.path()).await;
        assert_eq!(
            bluez.bus_address(),
            format!("unix:path={}", dir.path().join("bus").display())
        );
        bluez.add_adapter("hci0").await;

        let client = zbus::connection::Builder::address(bluez.bus_address().as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        let mut signals = Signals::subscribe(&client).await;

        // Discovery as a scanning client sets it up; the mock keeps the call log.
        assert!(!bluez.discovering("hci0").await);
        assert_eq!(bluez.discovery_filter("hci0").await, vec![]);
        let filter = HashMap::from([
            ("Transport", Value::from("le")),
            ("DuplicateData", Value::from(true)),
        ]);
        adapter_call(&client, "SetDiscoveryFilter", &(filter,))
            .await
            .unwrap();
        adapter_call(&client, "StartDiscovery", &()).await.unwrap();
        let changed = signals.properties_changed("/org/bluez/hci0", ADAPTER).await;
        assert_eq!(keys(&changed), BTreeSet::from(["Discovering"]));
        assert!(boolean(&changed, "Discovering"));
        assert!(bluez.discovering("hci0").await);
        assert_eq!(bluez.start_discovery_calls("hci0").await, 1);
        assert_eq!(
            bluez.discovery_filter("hci0").await,
            vec![
                ("DuplicateData".to_string(), "true".to_string()),
                ("Transport".to_string(), "le".to_string()),
            ]
        );
        let bad = HashMap::from([("DuplicateData", Value::from("yes"))]);
        let error = adapter_call(&client, "SetDiscoveryFilter", &(bad,))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("org.bluez.Error.InvalidArguments"),
            "{error}"
        );

        // A sensor appears with its first advertisement already in it.
        let first = Advert {
            rssi: -61,
            manufacturer: vec![(0x0499, vec![0x05, 0x12, 0xfc, 0x00])],
            service: vec![(ENVIRONMENTAL.to_string(), vec![0x01, 0x02])],
            uuids: vec![ENVIRONMENTAL.to_string()],
        };
        bluez
            .appear("hci0", SENSOR, Some("Ruuvi 0102"), &first)
            .await;
        let (path, props) = signals.interfaces_added().await;
        assert_eq!(path, SENSOR_PATH);
        assert_eq!(manufacturer(&props), first.manufacturer);
        assert_eq!(service(&props), first.service);
        assert_eq!(rssi(&props), -61);
        assert_eq!(signature(&props["UUIDs"]), "as");
        assert_eq!(
            Vec::<String>::try_from(props["UUIDs"].try_clone().unwrap()).unwrap(),
            first.uuids
        );
        assert_eq!(string(&props, "Address"), "C4:7C:8D:6A:01:02");
        assert_eq!(string(&props, "AddressType"), "public");
        assert_eq!(string(&props, "Name"), "Ruuvi 0102");
        assert_eq!(string(&props, "Alias"), "Ruuvi 0102");
        assert_eq!(signature(&props["Adapter"]), "o");
        assert!(!boolean(&props, "Paired"));
        assert!(!boolean(&props, "Connected"));

        // Every later advertisement carries its data, changed or not.
        let later = Advert {
            rssi: -70,
            ..first.clone()
        };
        for _ in 0..2 {
            bluez.advertise("hci0", SENSOR, &later).await;
            let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
            assert_eq!(
                keys(&changed),
                BTreeSet::from(["ManufacturerData", "RSSI", "ServiceData"])
            );
            assert_eq!(manufacturer(&changed), later.manufacturer);
            assert_eq!(service(&changed), later.service);
            assert_eq!(rssi(&changed), -70);
        }
        bluez.rssi("hci0", SENSOR, -80).await;
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(keys(&changed), BTreeSet::from(["RSSI"]));
        assert_eq!(rssi(&changed), -80);

        // What a client reads back agrees with the signals.
        let objects: HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>> =
            client
                .call_method(
                    Some(BLUEZ),
                    "/",
                    Some(OBJECT_MANAGER),
                    "GetManagedObjects",
                    &(),
                )
                .await
                .unwrap()
                .body()
                .deserialize()
                .unwrap();
        let sensor = &objects[&OwnedObjectPath::try_from(SENSOR_PATH).unwrap()][DEVICE];
        assert_eq!(rssi(sensor), -80);
        assert_eq!(manufacturer(sensor), later.manufacturer);

        bluez.disappear("hci0", SENSOR).await;
        assert_eq!(
            signals.interfaces_removed().await,
            (SENSOR_PATH.to_string(), vec![DEVICE.to_string()])
        );

        // A device without a name, as BlueZ shows it.
        let beacon = Advert {
            rssi: -90,
            manufacturer: vec![(0x004c, vec![0x02, 0x15])],
            ..Advert::default()
        };
        bluez.appear("hci0", BEACON, None, &beacon).await;
        let (path, props) = signals.interfaces_added().await;
        assert_eq!(path, BEACON_PATH);
        assert!(!props.contains_key("Name"));
        assert!(!props.contains_key("ServiceData"));
        assert_eq!(string(&props, "Alias"), "D0-00-00-00-00-0B");
        assert_eq!(manufacturer(&props), beacon.manufacturer);

        // Powering off ends discovery, and discovery needs power.
        bluez.set_powered("hci0", false).await;
        let changed = signals.properties_changed("/org/bluez/hci0", ADAPTER).await;
        assert_eq!(keys(&changed), BTreeSet::from(["Discovering", "Powered"]));
        assert!(!boolean(&changed, "Powered"));
        assert!(!boolean(&changed, "Discovering"));
        assert!(!bluez.discovering("hci0").await);
        let error = adapter_call(&client, "StartDiscovery", &())
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("org.bluez.Error.NotReady"),
            "{error}"
        );
        assert_eq!(bluez.start_discovery_calls("hci0").await, 2);
        bluez.set_powered("hci0", true).await;
        let changed = signals.properties_changed("/org/bluez/hci0", ADAPTER).await;
        assert_eq!(keys(&changed), BTreeSet::from(["Powered"]));

        // Unplugged: the device goes first, then the adapter.
        bluez.remove_adapter("hci0").await;
        assert_eq!(
            signals.interfaces_removed().await,
            (BEACON_PATH.to_string(), vec![DEVICE.to_string()])
        );
        assert_eq!(
            signals.interfaces_removed().await,
            ("/org/bluez/hci0".to_string(), vec![ADAPTER.to_string()])
        );
    }

    #[tokio::test]
    async fn discovery_starts_without_a_filter() {
        let dir = tempfile::tempdir().unwrap();
        let bluez = Bluez::start(dir.path()).await;
        bluez.add_adapter("hci1").await;
        let client = zbus::connection::Builder::address(bluez.bus_address().as_str())
            .unwrap()
            .build()
            .await
            .unwrap();
        let call =
            |method| client.call_method(Some(BLUEZ), "/org/bluez/hci1", Some(ADAPTER), method, &());
        call("StartDiscovery").await.unwrap();
        assert!(bluez.discovering("hci1").await);
        call("StopDiscovery").await.unwrap();
        assert!(!bluez.discovering("hci1").await);
        assert_eq!(bluez.start_discovery_calls("hci1").await, 1);
        assert_eq!(bluez.discovery_filter("hci1").await, vec![]);
    }

    #[tokio::test]
    async fn connects_and_serves_gatt_like_bluez() {
        let dir = tempfile::tempdir().unwrap();
        let bluez = Bluez::start(dir.path()).await;
        bluez.add_adapter("hci0").await;
        let client = client_of(&bluez).await;
        let mut signals = Signals::subscribe(&client).await;

        bluez
            .appear("hci0", SENSOR, Some("Ruuvi 0102"), &Advert::default())
            .await;
        assert_eq!(signals.interfaces_added().await.0, SENSOR_PATH);
        let flags = |flags: &[&str]| flags.iter().map(|f| f.to_string()).collect();
        bluez
            .gatt_service(
                "hci0",
                SENSOR,
                ENVIRONMENTAL,
                &[
                    Characteristic {
                        uuid: TEMPERATURE.to_string(),
                        value: vec![0x2c, 0x09],
                        flags: flags(&["read"]),
                    },
                    Characteristic {
                        uuid: HUMIDITY.to_string(),
                        value: vec![0x10, 0x17],
                        flags: flags(&["notify"]),
                    },
                ],
            )
            .await;
        assert!(!bluez.connected("hci0", SENSOR).await);
        assert_eq!(bluez.connect_calls("hci0", SENSOR).await, 0);
        assert!(!managed_objects(&client)
            .await
            .contains_key(&OwnedObjectPath::try_from(SERVICE_PATH).unwrap()));

        // Connect answers once connected; the services are resolved after.
        connect_device(&client, SENSOR_PATH).await.unwrap();
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(keys(&changed), BTreeSet::from(["Connected"]));
        assert!(boolean(&changed, "Connected"));
        let (path, interfaces) = signals.added().await;
        assert_eq!(path, SERVICE_PATH);
        assert_eq!(interfaces.len(), 1, "{interfaces:?}");
        let service = &interfaces[GATT_SERVICE];
        assert_eq!(string(service, "UUID"), ENVIRONMENTAL);
        assert!(boolean(service, "Primary"));
        assert_eq!(object_path(service, "Device"), SENSOR_PATH);
        let (path, interfaces) = signals.added().await;
        assert_eq!(path, TEMPERATURE_PATH);
        let temperature = &interfaces[GATT_CHARACTERISTIC];
        assert_eq!(string(temperature, "UUID"), TEMPERATURE);
        assert_eq!(object_path(temperature, "Service"), SERVICE_PATH);
        assert_eq!(strings(temperature, "Flags"), ["read"]);
        // BlueZ has no Value before a read, and no Notifying without notify.
        assert!(!temperature.contains_key("Value"));
        assert!(!temperature.contains_key("Notifying"));
        let (path, interfaces) = signals.added().await;
        assert_eq!(path, HUMIDITY_PATH);
        let humidity = &interfaces[GATT_CHARACTERISTIC];
        assert_eq!(string(humidity, "UUID"), HUMIDITY);
        assert_eq!(strings(humidity, "Flags"), ["notify"]);
        assert!(!boolean(humidity, "Notifying"));
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(keys(&changed), BTreeSet::from(["ServicesResolved"]));
        assert!(boolean(&changed, "ServicesResolved"));
        assert!(bluez.connected("hci0", SENSOR).await);
        let objects = managed_objects(&client).await;
        let object = |path: &str| &objects[&OwnedObjectPath::try_from(path).unwrap()];
        assert!(object(SERVICE_PATH).contains_key(GATT_SERVICE));
        assert!(object(TEMPERATURE_PATH).contains_key(GATT_CHARACTERISTIC));
        assert!(object(HUMIDITY_PATH).contains_key(GATT_CHARACTERISTIC));
        assert!(boolean(&object(SENSOR_PATH)[DEVICE], "ServicesResolved"));

        // A read answers the value, which BlueZ's cache announces.
        assert_eq!(
            read_value(&client, TEMPERATURE_PATH).await.unwrap(),
            [0x2c, 0x09]
        );
        let changed = signals
            .properties_changed(TEMPERATURE_PATH, GATT_CHARACTERISTIC)
            .await;
        assert_eq!(keys(&changed), BTreeSet::from(["Value"]));
        assert_eq!(bytes(&changed, "Value"), [0x2c, 0x09]);
        let refused = error(
            object_call(
                &client,
                HUMIDITY_PATH,
                GATT_CHARACTERISTIC,
                "ReadValue",
                &(HashMap::<&str, Value>::new(),),
            )
            .await,
        );
        assert_eq!(
            refused,
            (
                "org.bluez.Error.NotPermitted".to_string(),
                "Read not permitted".to_string()
            )
        );
        assert_eq!(bluez.read_calls("hci0", SENSOR, TEMPERATURE).await, 1);
        assert_eq!(bluez.read_calls("hci0", SENSOR, HUMIDITY).await, 1);

        // Notifications.
        let refused = error(
            object_call(
                &client,
                TEMPERATURE_PATH,
                GATT_CHARACTERISTIC,
                "StartNotify",
                &(),
            )
            .await,
        );
        assert_eq!(refused.0, "org.bluez.Error.NotSupported");
        assert!(!bluez.notifying("hci0", SENSOR, HUMIDITY).await);
        object_call(
            &client,
            HUMIDITY_PATH,
            GATT_CHARACTERISTIC,
            "StartNotify",
            &(),
        )
        .await
        .unwrap();
        let changed = signals
            .properties_changed(HUMIDITY_PATH, GATT_CHARACTERISTIC)
            .await;
        assert_eq!(keys(&changed), BTreeSet::from(["Notifying"]));
        assert!(boolean(&changed, "Notifying"));
        assert!(bluez.notifying("hci0", SENSOR, HUMIDITY).await);
        assert!(!bluez.notifying("hci0", SENSOR, TEMPERATURE).await);
        bluez
            .set_value("hci0", SENSOR, HUMIDITY, &[0x11, 0x17])
            .await;
        let changed = signals
            .properties_changed(HUMIDITY_PATH, GATT_CHARACTERISTIC)
            .await;
        assert_eq!(keys(&changed), BTreeSet::from(["Value"]));
        assert_eq!(bytes(&changed, "Value"), [0x11, 0x17]);
        // A characteristic nobody listens to changes silently; a read sees it.
        bluez
            .set_value("hci0", SENSOR, TEMPERATURE, &[0x2d, 0x09])
            .await;
        assert_eq!(
            read_value(&client, TEMPERATURE_PATH).await.unwrap(),
            [0x2d, 0x09]
        );
        let changed = signals
            .properties_changed(TEMPERATURE_PATH, GATT_CHARACTERISTIC)
            .await;
        assert_eq!(bytes(&changed, "Value"), [0x2d, 0x09]);
        assert_eq!(bluez.read_calls("hci0", SENSOR, TEMPERATURE).await, 2);

        // The sensor drops the link: one PropertiesChanged, no notifications.
        bluez.drop_connection("hci0", SENSOR).await;
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(
            keys(&changed),
            BTreeSet::from(["Connected", "ServicesResolved"])
        );
        assert!(!boolean(&changed, "Connected"));
        assert!(!boolean(&changed, "ServicesResolved"));
        assert!(!bluez.connected("hci0", SENSOR).await);
        assert!(!bluez.notifying("hci0", SENSOR, HUMIDITY).await);
        bluez
            .set_value("hci0", SENSOR, HUMIDITY, &[0x12, 0x17])
            .await;
        let refused = error(
            object_call(
                &client,
                TEMPERATURE_PATH,
                GATT_CHARACTERISTIC,
                "ReadValue",
                &(HashMap::<&str, Value>::new(),),
            )
            .await,
        );
        assert_eq!(
            refused,
            (
                "org.bluez.Error.Failed".to_string(),
                "Not connected".to_string()
            )
        );

        // A connection attempt that fails, as a radio timeout does.
        bluez.fail_connects("hci0", SENSOR, 1).await;
        let started = std::time::Instant::now();
        let refused = error(connect_device(&client, SENSOR_PATH).await);
        assert_eq!(
            refused,
            (
                "org.bluez.Error.Failed".to_string(),
                "le-connection-abort-by-local".to_string()
            )
        );
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
        assert!(!bluez.connected("hci0", SENSOR).await);

        // Reconnected: the GATT cache is kept (no InterfacesAdded) and the
        // notify session resumes.
        connect_device(&client, SENSOR_PATH).await.unwrap();
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(keys(&changed), BTreeSet::from(["Connected"]));
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(keys(&changed), BTreeSet::from(["ServicesResolved"]));
        assert!(bluez.notifying("hci0", SENSOR, HUMIDITY).await);
        bluez
            .set_value("hci0", SENSOR, HUMIDITY, &[0x13, 0x17])
            .await;
        let changed = signals
            .properties_changed(HUMIDITY_PATH, GATT_CHARACTERISTIC)
            .await;
        assert_eq!(bytes(&changed, "Value"), [0x13, 0x17]);
        object_call(
            &client,
            HUMIDITY_PATH,
            GATT_CHARACTERISTIC,
            "StopNotify",
            &(),
        )
        .await
        .unwrap();
        let changed = signals
            .properties_changed(HUMIDITY_PATH, GATT_CHARACTERISTIC)
            .await;
        assert!(!boolean(&changed, "Notifying"));
        assert!(!bluez.notifying("hci0", SENSOR, HUMIDITY).await);
        let refused = error(
            object_call(
                &client,
                HUMIDITY_PATH,
                GATT_CHARACTERISTIC,
                "StopNotify",
                &(),
            )
            .await,
        );
        assert_eq!(refused.0, "org.bluez.Error.Failed");

        // Disconnect, then two Connects at once to one device.
        object_call(&client, SENSOR_PATH, DEVICE, "Disconnect", &())
            .await
            .unwrap();
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(
            keys(&changed),
            BTreeSet::from(["Connected", "ServicesResolved"])
        );
        assert!(!boolean(&changed, "Connected"));
        assert_eq!(bluez.connect_calls("hci0", SENSOR).await, 3);
        let (first, second) = tokio::join!(
            connect_device(&client, SENSOR_PATH),
            connect_device(&client, SENSOR_PATH)
        );
        let mut names: Vec<String> = [first, second]
            .into_iter()
            .map(|result| result.map_or_else(|_| String::new(), |_| "ok".to_string()))
            .collect();
        names.sort();
        assert_eq!(names, ["", "ok"]);
        // Connected already: answered at once, and counted.
        connect_device(&client, SENSOR_PATH).await.unwrap();
        assert_eq!(bluez.connect_calls("hci0", SENSOR).await, 6);
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(keys(&changed), BTreeSet::from(["Connected"]));
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert_eq!(keys(&changed), BTreeSet::from(["ServicesResolved"]));
        assert_eq!(bluez.max_connects_in_flight("hci0").await, 1);

        // A connected device that goes takes its GATT objects along.
        bluez.disappear("hci0", SENSOR).await;
        let changed = signals.properties_changed(SENSOR_PATH, DEVICE).await;
        assert!(!boolean(&changed, "Connected"));
        for (path, interface) in [
            (TEMPERATURE_PATH, GATT_CHARACTERISTIC),
            (HUMIDITY_PATH, GATT_CHARACTERISTIC),
            (SERVICE_PATH, GATT_SERVICE),
            (SENSOR_PATH, DEVICE),
        ] {
            assert_eq!(
                signals.interfaces_removed().await,
                (path.to_string(), vec![interface.to_string()])
            );
        }
        assert!(!managed_objects(&client)
            .await
            .keys()
            .any(|path| path.as_str().starts_with(SENSOR_PATH)));

        // Connections to two devices overlap, and the mock sees it.
        bluez.appear("hci0", SENSOR, None, &Advert::default()).await;
        bluez.appear("hci0", BEACON, None, &Advert::default()).await;
        let (sensor, beacon) = tokio::join!(
            connect_device(&client, SENSOR_PATH),
            connect_device(&client, BEACON_PATH)
        );
        sensor.unwrap();
        beacon.unwrap();
        assert_eq!(bluez.max_connects_in_flight("hci0").await, 2);
        assert_eq!(bluez.connect_calls("hci0", SENSOR).await, 7);
        assert_eq!(bluez.connect_calls("hci0", BEACON).await, 1);
        assert!(bluez.connected("hci0", BEACON).await);
    }

    /// A client's AdvertisementMonitor1, reporting the calls it gets.
    struct Monitor {
        name: &'static str,
        patterns: Vec<(u8, u8, Vec<u8>)>,
        calls: tokio::sync::mpsc::UnboundedSender<String>,
    }

    impl Monitor {
        fn report(&self, call: String) {
            let _ = self.calls.send(format!("{} {call}", self.name));
        }
    }

    #[zbus::interface(name = "org.bluez.AdvertisementMonitor1")]
    impl Monitor {
        fn release(&self) {
            self.report("Release".to_string());
        }

        fn activate(&self) {
            self.report("Activate".to_string());
        }

        fn device_found(&self, device: OwnedObjectPath) {
            self.report(format!("DeviceFound {}", device.as_str()));
        }

        fn device_lost(&self, device: OwnedObjectPath) {
            self.report(format!("DeviceLost {}", device.as_str()));
        }

        #[zbus(property, name = "Type")]
        fn kind(&self) -> String {
            "or_patterns".to_string()
        }

        #[zbus(property)]
        fn patterns(&self) -> Vec<(u8, u8, Vec<u8>)> {
            self.patterns.clone()
        }
    }

    #[tokio::test]
    async fn serves_advertisement_monitors_like_bluez() {
        let dir = tempfile::tempdir().unwrap();
        let bluez = Bluez::start(dir.path()).await;
        bluez.add_adapter("hci0").await;
        bluez.offer_monitors("hci0").await;
        let client = client_of(&bluez).await;

        let objects = managed_objects(&client).await;
        let adapter = &objects[&OwnedObjectPath::try_from("/org/bluez/hci0").unwrap()];
        assert!(adapter.contains_key(ADAPTER));
        let manager = &adapter[MONITOR_MANAGER];
        assert_eq!(strings(manager, "SupportedMonitorTypes"), ["or_patterns"]);
        assert!(strings(manager, "SupportedFeatures").is_empty());

        let (calls, mut called) = tokio::sync::mpsc::unbounded_channel();
        let mut next_calls = async |n: usize| {
            let mut got = BTreeSet::new();
            for _ in 0..n {
                let call = tokio::time::timeout(PATIENCE, called.recv())
                    .await
                    .expect("a call on a monitor")
                    .unwrap();
                got.insert(call);
            }
            got
        };
        let monitor = |name, patterns| Monitor {
            name,
            patterns,
            calls: calls.clone(),
        };
        let ruuvi = vec![(0, 0xff, vec![0x99, 0x04])];
        let server = client.object_server();
        server
            .at("/kite/monitor", zbus::fdo::ObjectManager)
            .await
            .unwrap();
        server
            .at("/kite/monitor/ruuvi", monitor("ruuvi", ruuvi.clone()))
            .await
            .unwrap();
        server
            .at("/kite/monitor/empty", monitor("empty", vec![]))
            .await
            .unwrap();
        let application = ObjectPath::try_from("/kite/monitor").unwrap();
        let register = async |method| {
            object_call(
                &client,
                "/org/bluez/hci0",
                MONITOR_MANAGER,
                method,
                &(&application,),
            )
            .await
        };

        // Registered, the valid monitor is activated and the invalid released.
        register("RegisterMonitor").await.unwrap();
        assert_eq!(
            bluez.monitors("hci0").await,
            vec![("or_patterns".to_string(), ruuvi.clone())]
        );
        assert_eq!(
            next_calls(2).await,
            BTreeSet::from(["empty Release".to_string(), "ruuvi Activate".to_string()])
        );
        assert_eq!(
            error(register("RegisterMonitor").await).0,
            "org.bluez.Error.AlreadyExists"
        );

        bluez.appear("hci0", SENSOR, None, &Advert::default()).await;
        bluez.monitor_found("hci0", SENSOR).await;
        assert_eq!(
            next_calls(1).await,
            BTreeSet::from([format!("ruuvi DeviceFound {SENSOR_PATH}")])
        );

        // A monitor exported later is taken and activated too.
        let environmental = vec![(0, 0x16, vec![0x1a, 0x18])];
        server
            .at(
                "/kite/monitor/environmental",
                monitor("environmental", environmental.clone()),
            )
            .await
            .unwrap();
        assert_eq!(
            next_calls(1).await,
            BTreeSet::from(["environmental Activate".to_string()])
        );
        assert_eq!(
            bluez.monitors("hci0").await,
            vec![
                ("or_patterns".to_string(), ruuvi.clone()),
                ("or_patterns".to_string(), environmental),
            ]
        );

        // Unregistered, each monitor is released.
        register("UnregisterMonitor").await.unwrap();
        assert_eq!(
            next_calls(2).await,
            BTreeSet::from([
                "environmental Release".to_string(),
                "ruuvi Release".to_string()
            ])
        );
        assert!(bluez.monitors("hci0").await.is_empty());
        assert_eq!(
            error(register("UnregisterMonitor").await).0,
            "org.bluez.Error.DoesNotExist"
        );

        // A registration ends when its client leaves the bus.
        register("RegisterMonitor").await.unwrap();
        assert_eq!(bluez.monitors("hci0").await.len(), 2);
        client.close().await.unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !bluez.monitors("hci0").await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the registration outlived its client"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
